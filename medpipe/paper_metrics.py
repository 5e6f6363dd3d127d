"""The Synapse tables' metric convention (TransUNet's), next to the one medpipe reports.

The 2D papers (TransUNet, ParaTransCNN, TransDAE, DAE-Former, MISSFormer ...) all score
Synapse with TransUNet's ``calculate_metric_percase`` (medpy), per case and organ:

* prediction and ground truth both non-empty: Dice, and HD95 = the 95th percentile of the
  *pooled* surface distances of both directions (medpy ``hd95``), **in voxels**: the test
  volumes are scored with spacing (1, 1, 1) (``z_spacing=1``), so the number is neither
  millimetres nor comparable between scanners (Synapse: 0.54-0.98 mm pixels, 2.5-5 mm
  slices);
* prediction non-empty, ground truth empty: Dice 1, HD95 0 (a false positive is rewarded);
* prediction empty: Dice 0, HD95 0 (a missed organ gets the *best* HD95), also when both
  are empty;

then the mean over cases per organ, and the mean over the 8 organs.

What medpipe reports instead (``medpipe.metrics.evaluate_case``, MONAI's definitions):
Dice per organ with nnU-Net's rule (both empty -> not counted, false positive -> 0), HD95
in millimetres with the volume's real spacing, as the larger of the two directed 95th
percentiles, and NaN (not 0) when either mask is empty, so a miss shows in Dice and is
not hidden in HD95. Both conventions come from the same surface distances here.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from medpipe.metrics import surface_distances

__all__ = ["transunet_case_metrics", "transunet_summary"]


def transunet_case_metrics(pred: np.ndarray, gt: np.ndarray, labels: Iterable[int]) -> dict[int, tuple[float, float]]:
    """``{label: (dice, hd95_voxels)}`` for one case, by TransUNet's rules (see module docstring)."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    out = {}
    for label in labels:
        p, g = pred == label, gt == label
        n_p, n_g = int(np.count_nonzero(p)), int(np.count_nonzero(g))
        if n_p and n_g:
            dice = 2.0 * int(np.count_nonzero(p & g)) / (n_p + n_g)
            d_pred, d_gt = surface_distances(p, g, spacing=None)  # voxel units, as medpy without voxelspacing
            out[int(label)] = (dice, float(np.percentile(np.hstack([d_pred, d_gt]), 95)))
        elif n_p:
            out[int(label)] = (1.0, 0.0)
        else:
            out[int(label)] = (0.0, 0.0)
    return out


def transunet_summary(cases: list[dict[int, tuple[float, float]]], names: dict[int, str]) -> dict[str, object]:
    """Per-organ means over cases and the mean over organs, as the papers' tables print them."""
    per = {names[k]: {"dice": float(np.mean([c[k][0] for c in cases])), "hd95_voxels": float(np.mean([c[k][1] for c in cases]))}
           for k in names}
    return {"per_label": per, "mean": {"dice": float(np.mean([v["dice"] for v in per.values()])),
                                       "hd95_voxels": float(np.mean([v["hd95_voxels"] for v in per.values()]))},
            "n_cases": len(cases), "convention": "TransUNet (medpy): voxel units, empty prediction -> Dice 0, HD95 0"}
