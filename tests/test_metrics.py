"""Our metrics must equal MONAI's on the same inputs (1e-6), including anisotropic spacing."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from medpipe import metrics

monai_metrics = pytest.importorskip("monai.metrics")


def _blobs(shape, seed, n=3, sigma=2.5):
    """Label c where a smooth random field falls in its c-th band: irregular multi-part blobs."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    field /= field.std()
    out = np.zeros(shape, np.int16)
    edges = [0.5, 0.9, 1.3, 10.0]
    for label in range(1, n + 1):
        out[(field > edges[label - 1]) & (field <= edges[label])] = label
    return out


def _onehot(lab, n):
    return torch.from_numpy(np.stack([lab == c for c in range(n + 1)])[None].astype(np.float32))


def _monai(pred, gt, n, spacing, tol):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yp, yt = _onehot(pred, n), _onehot(gt, n)
        d = monai_metrics.compute_dice(yp, yt, include_background=False, ignore_empty=True)[0].numpy()
        hd = monai_metrics.compute_hausdorff_distance(
            yp, yt, include_background=False, percentile=95, spacing=list(spacing)
        )[0].numpy()
        nsd = monai_metrics.compute_surface_dice(
            yp, yt, class_thresholds=[tol] * (n + 1), include_background=True, spacing=list(spacing)
        )[0, 1:].numpy()
    return d, hd, nsd


@pytest.mark.parametrize("seed,spacing", [(0, (1.0, 1.0, 1.0)), (1, (0.8, 1.1, 3.0)), (2, (2.0, 0.7, 1.5))])
def test_agrees_with_monai_on_random_blobs(seed, spacing):
    gt = _blobs((40, 36, 28), seed)
    assert all((gt == c).any() for c in (1, 2, 3))
    pred = _blobs((40, 36, 28), seed + 100)
    # a realistic prediction: the GT moved and eroded a little, plus noise blobs
    pred = np.where(pred > 0, pred, np.roll(ndimage.grey_erosion(gt, size=2), 2, axis=0))
    d_m, hd_m, nsd_m = _monai(pred, gt, 3, spacing, 2.0)
    for i, label in enumerate((1, 2, 3)):
        p, g = pred == label, gt == label
        assert metrics.dice(p, g) == pytest.approx(float(d_m[i]), rel=1e-6, abs=1e-6, nan_ok=True)
        assert metrics.hausdorff_distance(p, g, spacing) == pytest.approx(float(hd_m[i]), rel=1e-6, abs=1e-6, nan_ok=True)
        assert metrics.surface_dice(p, g, 2.0, spacing) == pytest.approx(float(nsd_m[i]), rel=1e-6, abs=1e-6, nan_ok=True)
    # evaluate_case reads HD95 / NSD from the same distances
    rows = metrics.evaluate_case(pred, gt, [1, 2, 3], spacing, nsd_tolerance_mm=2.0)
    np.testing.assert_allclose([r.hd95 for r in rows], hd_m, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose([r.nsd for r in rows], nsd_m, rtol=1e-6, atol=1e-6)


def test_agrees_with_monai_on_phantom():
    phantoms = pytest.importorskip("medpipe.data.phantoms")
    image, labels = phantoms.ct_phantom((48, 48, 32), (1.5, 1.5, 3.0), seed=3)
    gt = np.asarray(labels.array[0] if hasattr(labels, "array") else labels).astype(np.int16)
    n = int(gt.max())
    pred = np.roll(gt, 1, axis=1)
    pred[ndimage.binary_dilation(gt == 1, iterations=1) & (pred == 0)] = 1
    spacing = (1.5, 1.5, 3.0)
    d_m, hd_m, nsd_m = _monai(pred, gt, n, spacing, 3.0)
    rows = metrics.evaluate_case(pred, gt, range(1, n + 1), spacing, nsd_tolerance_mm=3.0)
    for i, r in enumerate(rows):
        if np.isnan(d_m[i]):
            continue
        assert r.dice == pytest.approx(float(d_m[i]), rel=1e-6, abs=1e-6, nan_ok=True)
        assert r.hd95 == pytest.approx(float(hd_m[i]), rel=1e-6, abs=1e-6, nan_ok=True)
        assert r.nsd == pytest.approx(float(nsd_m[i]), rel=1e-6, abs=1e-6, nan_ok=True)


def test_empty_conventions_match_monai():
    z = np.zeros((10, 10, 10), bool)
    m = z.copy()
    m[3:6, 3:6, 3:6] = True
    assert np.isnan(metrics.dice(z, z))
    assert metrics.dice(z, z, ignore_empty=False) == 1.0
    assert metrics.dice(m, z, ignore_empty=False) == 0.0
    assert metrics.dice(z, m) == 0.0
    assert np.isnan(metrics.hausdorff_distance(z, z))
    assert np.isnan(metrics.hausdorff_distance(m, z))  # MONAI: q95 of all-inf distances
    assert metrics.hausdorff_distance(z, m, percentile=None) == np.inf
    assert np.isnan(metrics.surface_dice(z, z, 1.0))
    assert metrics.surface_dice(z, m, 1.0) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for p, g in ((z, z), (m, z), (z, m)):
            hd = monai_metrics.compute_hausdorff_distance(
                _onehot(p.astype(int), 1), _onehot(g.astype(int), 1), include_background=False, percentile=95
            )[0, 0].item()
            ours = metrics.hausdorff_distance(p, g)
            assert (np.isnan(hd) and np.isnan(ours)) or hd == ours
    # evaluate_case: both empty -> NaN Dice (nnU-Net), false positive -> 0
    rows = metrics.evaluate_case(m.astype(int), z.astype(int), [1, 2])
    assert rows[0].dice == 0.0 and np.isnan(rows[1].dice)


def test_known_values_with_spacing():
    gt = np.zeros((20, 20, 20), bool)
    gt[5:15, 5:15, 5:15] = True
    pred = np.roll(gt, 2, axis=2)  # shifted 2 voxels along K
    assert metrics.dice(pred, gt) == pytest.approx(2 * 10 * 10 * 8 / 2000)
    # along K the shift is 2 voxels = 6 mm at 3 mm spacing; HD95 sits at that shift
    assert metrics.hausdorff_distance(pred, gt, (1.0, 1.0, 3.0), percentile=None) == pytest.approx(6.0)
    smaller = gt.copy()
    smaller[:, :, 14] = False
    ml, pct = metrics.volume_difference(smaller, gt, (1.0, 1.0, 3.0))
    assert ml == pytest.approx(-1 * 10 * 10 * 3.0 / 1000) and pct == pytest.approx(-10.0)
