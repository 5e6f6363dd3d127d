"""Planning follows nnU-Net's rules: median spacing, anisotropic axis -> 10th percentile, pools."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medpipe.errors import InputError
from medpipe.training.dataset import open_dataset
from medpipe.training.fingerprint import Fingerprint, compute_fingerprint, ras_spacing_shape
from medpipe.training.plan import make_plan, pooling, target_spacing


def _fp(spacings, shapes, modality="CT"):
    it = {"percentile_00_5": -100.0, "percentile_99_5": 300.0, "mean": 80.0, "std": 50.0,
          "clipped_mean": 80.0, "clipped_std": 50.0}
    return Fingerprint([list(s) for s in spacings], [list(s) for s in shapes], modality, it, len(spacings))


def test_median_spacing_for_isotropic_data():
    sp = [(0.8, 0.8, 1.0), (1.0, 1.0, 1.2), (0.7, 0.7, 2.0)]
    assert target_spacing(sp, [(200, 200, 150)] * 3) == pytest.approx([0.8, 0.8, 1.2])


def test_anisotropic_axis_takes_tenth_percentile():
    z = [3.0, 4.0, 5.0, 5.0, 5.0, 6.0, 6.0, 6.0, 7.0, 8.0]
    sp = [(0.7, 0.7, s) for s in z]
    shapes = [(512, 512, 40)] * len(z)
    tgt = target_spacing(sp, shapes)
    assert tgt[:2] == pytest.approx([0.7, 0.7])
    assert tgt[2] == pytest.approx(np.percentile(z, 10))  # not the median 5.5
    # coarse spacing but as many voxels as the other axes: nnU-Net keeps the median
    assert target_spacing(sp, [(512, 512, 400)] * len(z))[2] == pytest.approx(5.5)


def test_pooling_stops_at_min_feature_and_skips_coarse_axes():
    pools, convs = pooling([1.0, 1.0, 3.0], [128, 128, 32])
    assert len(pools) == 5 and len(convs) == 6
    assert pools[0] == [2, 2, 1] and convs[0] == [3, 3, 1]  # z is 3x coarser: not pooled, 1-wide kernel
    sizes = np.array([128, 128, 32]) // np.prod(pools, axis=0)
    assert (sizes >= 4).all()


def test_plan_patch_fits_budget_and_divides(tmp_path):
    fp = _fp([(1.5, 1.5, 2.0)] * 4, [(200, 180, 120)] * 4)
    plan = make_plan(fp, max_patch_voxels=48**3)
    assert math.prod(plan.patch_size) <= 48**3
    div = np.prod(plan.pool_op_kernel_sizes, axis=0)
    assert all(p % d == 0 for p, d in zip(plan.patch_size, div, strict=True))
    assert plan.normalization == {"scheme": "ct", "clip": [-100.0, 300.0], "mean": 80.0, "std": 50.0}
    assert make_plan(_fp([(1, 1, 1)], [(64, 64, 64)], "MR")).normalization == {"scheme": "zscore"}
    with pytest.raises(InputError, match="not divisible"):
        make_plan(fp, spacing=[2, 2, 2], patch_size=[40, 40, 36])


def test_fingerprint_of_phantoms(tiny_dataset):
    ds = open_dataset(tiny_dataset)
    fp = compute_fingerprint(ds)
    assert fp.n_cases == 4 and all(s == [32, 32, 32] for s in fp.shapes)
    # the tiny phantoms' spacings are ~12x12x10 mm with +-10 % jitter
    assert all(10.7 < s[0] < 13.3 and 8.9 < s[2] < 11.1 for s in fp.spacings)
    it = fp.intensity
    assert it["percentile_00_5"] < it["mean"] < it["percentile_99_5"] and it["std"] > 0
    sp, sh = ras_spacing_shape(np.diag([-2.0, 3.0, 1.0, 1.0])[[1, 0, 2, 3]], (10, 20, 30))
    assert sp == [3.0, 2.0, 1.0] and sh == [20, 10, 30]


def test_left_right_labels_are_not_mirrored_left_right():
    from medpipe.training.plan import mirror_axes

    fp = _fp([(1.5, 1.5, 2.0)] * 2, [(96, 96, 80)] * 2)
    assert make_plan(fp, label_names={1: "liver", 2: "kidney_left", 3: "kidney_right"}).tta_axes == [1, 2]
    assert make_plan(fp, label_names={1: "liver", 2: "spleen"}).tta_axes == [0, 1, 2]
    assert make_plan(fp, label_names={1: "liver"}, mirror=[2]).tta_axes == [2]
    assert mirror_axes({1: "lung_L"}) == [1, 2] and mirror_axes({1: "larynx"}) == [0, 1, 2]
