"""Tile planning and the Gaussian importance map (nnU-Net semantics)."""

from __future__ import annotations

import numpy as np
import pytest

from medpipe.inference.gaussian import gaussian_importance_map
from medpipe.inference.tiling import pad_amounts, plan_tiles, tile_starts


@pytest.mark.parametrize("size,patch,overlap", [(160, 96, 0.5), (100, 32, 0.5), (33, 32, 0.5), (64, 64, 0.5),
                                                (97, 16, 0.25), (250, 128, 0.5), (40, 7, 0.0)])
def test_tiles_cover_the_axis_evenly_and_touch_both_edges(size, patch, overlap):
    starts = tile_starts(size, patch, overlap)
    assert starts[0] == 0 and starts[-1] == size - patch
    steps = np.diff(starts)
    assert np.all(steps >= 1)
    assert np.all(steps <= int(np.ceil(patch * (1 - overlap))))  # never a gap, never less overlap than asked
    assert len(steps) == 0 or steps.max() - steps.min() <= 1  # evenly spread
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s:s + patch] = True
    assert covered.all()


def test_known_nnunet_steps():
    # nnU-Net: ceil((160 - 96) / 48) + 1 = 3 steps, spread as 0, 32, 64
    assert tile_starts(160, 96, 0.5) == [0, 32, 64]
    assert tile_starts(96, 96, 0.5) == [0]
    assert tile_starts(200, 64, 0.5) == [0, 27, 54, 82, 109, 136]  # ceil(136 / 32) + 1 = 6


def test_axis_smaller_than_patch_is_refused_and_padding_is_centred():
    with pytest.raises(ValueError, match="smaller than the patch"):
        tile_starts(20, 32)
    assert pad_amounts((20, 32, 41), (32, 32, 32)) == [(6, 6), (0, 0), (0, 0)]
    assert pad_amounts((5, 32, 32), (8, 8, 8)) == [(1, 2), (0, 0), (0, 0)]


def test_groups_follow_the_last_axis_and_completion_is_monotonic():
    plan = plan_tiles((40, 50, 70), (32, 32, 32), 0.5)
    groups = plan.groups()
    assert [z for z, _ in groups] == list(plan.starts[2])
    assert sum(len(t) for _, t in groups) == plan.n_tiles == 2 * 3 * 4
    done = [plan.completed_before(i) for i in range(len(groups))]
    assert done == sorted(done) and done[-1] == 70
    for i in range(len(groups) - 1):  # no later tile starts below the completed mark
        assert all(z >= done[i] for z, _ in groups[i + 1:])


def test_gaussian_map_matches_nnunet_recipe():
    g = gaussian_importance_map((32, 20, 9)).numpy()
    assert g.shape == (32, 20, 9) and g.dtype == np.float32
    assert g.max() == pytest.approx(1.0) and g[16, 10, 4] == pytest.approx(1.0)
    assert g.min() > 0
    # separable with sigma = patch / 8 along each axis
    sigma = 32 / 8
    assert g[16 + 4, 10, 4] == pytest.approx(np.exp(-0.5 * (4 / sigma) ** 2), rel=1e-5)
    assert gaussian_importance_map((32, 20, 9)) is gaussian_importance_map([32, 20, 9])  # cached


def test_gaussian_zeros_are_replaced_by_the_minimum():
    g = gaussian_importance_map((400, 3, 3), sigma_scale=0.01).numpy()  # underflows to 0 far from centre
    assert g.min() > 0
    assert (g == g.min()).sum() > 1
