"""TransUNet's Synapse convention against medpy (the tool the papers' numbers come from)."""

from __future__ import annotations

import numpy as np
import pytest

from medpipe.metrics import evaluate_case
from medpipe.paper_metrics import transunet_case_metrics, transunet_summary


def _blob(shape, centre, r):
    idx = np.indices(shape).astype(float)
    return sum(((idx[i] - centre[i]) / r[i]) ** 2 for i in range(3)) <= 1


def test_matches_medpy_and_the_empty_rules():
    binary = pytest.importorskip("medpy.metric.binary")
    shape = (40, 36, 12)
    gt = np.zeros(shape, np.uint8)
    gt[_blob(shape, (20, 18, 6), (9, 7, 4))] = 1
    gt[_blob(shape, (8, 8, 6), (4, 4, 3))] = 2  # label 3: absent from the ground truth
    pred = np.zeros(shape, np.uint8)
    pred[_blob(shape, (21, 17, 6), (8, 8, 3))] = 1
    pred[_blob(shape, (30, 28, 3), (2, 2, 2))] = 3  # false positive on an empty ground truth
    got = transunet_case_metrics(pred, gt, [1, 2, 3])
    assert got[1][0] == pytest.approx(binary.dc(pred == 1, gt == 1))
    assert got[1][1] == pytest.approx(binary.hd95(pred == 1, gt == 1))  # voxels, pooled percentile
    assert got[2] == (0.0, 0.0)  # missed organ: Dice 0 and the *best* HD95
    assert got[3] == (1.0, 0.0)  # false positive on an empty organ: Dice 1
    # medpipe's own numbers for the same case: mm, NaN where a mask is empty, 0 for the false positive
    ours = {m.label: m for m in evaluate_case(pred, gt, [1, 2, 3], spacing=(0.8, 0.8, 3.0))}
    assert ours[1].dice == pytest.approx(got[1][0]) and ours[1].hd95 != pytest.approx(got[1][1])
    assert ours[2].dice == 0.0 and np.isnan(ours[2].hd95)
    assert ours[3].dice == 0.0
    summary = transunet_summary([got, got], {1: "liver", 2: "spleen", 3: "gallbladder"})
    assert summary["mean"]["dice"] == pytest.approx((got[1][0] + 0 + 1) / 3)
