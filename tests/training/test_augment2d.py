"""albumentations 2D chain: shapes, label values, axes, and exact replay from a saved state."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from medpipe.errors import InputError
from medpipe.training.augment2d import Augmenter2D


def test_replay_labels_and_range():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(2, 40, 32)).astype(np.float32) * 100 - 50  # z-scores and HU alike: any range
    lab = np.zeros((1, 40, 32), np.int64)
    lab[0, 10:30, 8:20] = 3
    lab[0, 2:6, 2:6] = 7
    aug = Augmenter2D(seed=4, mirror_axes=(0, 1))
    outs = [aug(img, lab) for _ in range(6)]
    state = copy.deepcopy(aug.get_state())
    ahead = [aug(img, lab) for _ in range(6)]
    twin = Augmenter2D(seed=4, mirror_axes=(0, 1))
    twin.set_state(state)
    for (i1, l1), (i2, l2) in zip(ahead, (twin(img, lab) for _ in range(6)), strict=True):
        assert np.array_equal(i1, i2) and np.array_equal(l1, l2)
    for out_img, out_lab in outs:
        assert out_img.shape == (2, 40, 32) and out_img.dtype == np.float32 and np.isfinite(out_img).all()
        assert out_lab.shape == (1, 40, 32) and set(np.unique(out_lab)) <= {0, 3, 7}  # nearest: no new values
        assert out_img.min() >= img.min() - 1e-3 and out_img.max() <= img.max() + 1e-3  # intensities stay in range
    assert any(not np.array_equal(o[0], img) for o in outs)
    with pytest.raises(InputError, match="2D mirror axes must be 0 and/or 1"):
        Augmenter2D(mirror_axes=(2,))
