"""Patch sampling: a third of patches on foreground, small cases padded."""

from __future__ import annotations

import numpy as np

from medpipe.training.sampling import PatchSampler


def _case(shape, seed):
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint8)
    lab[2:4, 2:4, 2:4] = 1  # a tiny structure a uniform sampler would rarely hit
    lab[-3:, -3:, -3:] = 2
    locs = {c: np.argwhere(lab == c) for c in (1, 2)}
    return {"image": rng.normal(size=(1, *shape)).astype(np.float32), "label": lab, "locations": locs}


def test_foreground_fraction_is_a_third_and_forced_patches_hit_foreground():
    sampler = PatchSampler([_case((60, 60, 60), 0), _case((50, 64, 40), 1)], (16, 16, 16), seed=3)
    hits = 0
    for _ in range(3000):
        img, lab, forced = sampler.sample()
        assert img.shape == (1, 16, 16, 16) and lab.shape == (16, 16, 16)
        if forced:
            assert lab.any()
            hits += 1
    assert abs(hits / 3000 - 1 / 3) < 0.03
    assert sampler.forced_count == hits


def test_small_case_is_padded_with_background_and_image_minimum():
    case = _case((10, 12, 8), 2)
    sampler = PatchSampler([case], (16, 16, 16), fg_fraction=0.0, seed=0)
    img, lab, _ = sampler.sample()
    assert img.shape == (1, 16, 16, 16)
    assert lab.sum() == case["label"].sum()  # the whole case is inside, nothing lost
    assert np.isclose(img.min(), case["image"].min())


def test_same_seed_same_patches():
    a = PatchSampler([_case((40, 40, 40), 0)], (16, 16, 16), seed=7).batch(4)
    b = PatchSampler([_case((40, 40, 40), 0)], (16, 16, 16), seed=7).batch(4)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
