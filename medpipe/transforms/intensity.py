"""Intensity normalisation the way nnU-Net trains models (so inference matches training).

* ``ct``: clip to dataset-wide HU bounds (foreground 0.5/99.5 percentiles), then z-score
  with the dataset foreground mean/std; both come from the model bundle. When they are
  not given the image's own foreground statistics are used and the record says so.
* ``zscore``: per-image z-score (MR); with ``foreground_only`` statistics come from
  voxels > 0 and the background stays 0 (nnU-Net's ``use_mask_for_norm``).
* ``window``: clip to a display window (centre, width) and scale to [0, 1].
* ``none``: float32 cast only.

The record goes to ``meta.extra["intensity_history"]`` (provenance; intensities are never
restored, only geometry is).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from medpipe.errors import InputError
from medpipe.image import Image
from medpipe.transforms.history import TransformResult

__all__ = ["normalize", "NormScheme", "INTENSITY_KEY"]

INTENSITY_KEY = "intensity_history"
NormScheme = Literal["ct", "zscore", "window", "none"]
_EPS = 1e-8


def normalize(
    image: Image,
    scheme: NormScheme = "zscore",
    *,
    clip: Sequence[float] | None = None,
    percentiles: Sequence[float] = (0.5, 99.5),
    mean: float | None = None,
    std: float | None = None,
    window: Sequence[float] | None = None,
    foreground_only: bool = False,
    foreground_threshold: float | None = None,
) -> TransformResult:
    """Normalise intensities; returns the float32 image and the record of the numbers used.

    Example:
        >>> out, rec = normalize(ct, "ct", clip=(-1000, 1500), mean=50.0, std=300.0)  # doctest: +SKIP
    """
    if image.is_label:
        raise InputError("normalize was given a label map; only intensity images are normalised")
    x = image.array.astype(np.float32)
    rec: dict[str, Any] = {"op": "normalize", "scheme": scheme}
    if scheme == "none":
        out = x
    elif scheme == "window":
        if window is None or len(window) != 2 or float(window[1]) <= 0:
            raise InputError(f"window normalisation needs window=(centre, width>0), got {window!r}")
        c, w = float(window[0]), float(window[1])
        lo, hi = c - w / 2.0, c + w / 2.0
        out = (np.clip(x, lo, hi) - lo) / (hi - lo)
        rec.update(window=[c, w], clip=[lo, hi])
    elif scheme == "ct":
        thr = -500.0 if foreground_threshold is None else float(foreground_threshold)
        fg = x[x > thr]
        if fg.size == 0:
            fg = x.ravel()
        if clip is None:
            lo, hi = (float(v) for v in np.percentile(fg, [percentiles[0], percentiles[1]]))
            rec["clip_source"] = f"image foreground percentiles {list(percentiles)}"
        else:
            lo, hi = _pair(clip, "clip")
            rec["clip_source"] = "given"
        clipped_fg = np.clip(fg, lo, hi)
        m = float(clipped_fg.mean()) if mean is None else float(mean)
        s = float(clipped_fg.std()) if std is None else float(std)
        rec["stats_source"] = "given" if mean is not None and std is not None else "image foreground"
        out = (np.clip(x, lo, hi) - m) / max(s, _EPS)
        rec.update(clip=[lo, hi], mean=m, std=s)
    elif scheme == "zscore":
        thr = 0.0 if foreground_threshold is None else float(foreground_threshold)
        mask = (x > thr) if foreground_only else None
        vals = x[mask] if mask is not None and mask.any() else x.ravel()
        if clip is not None:
            lo, hi = _pair(clip, "clip")
            x = np.clip(x, lo, hi)
            vals = np.clip(vals, lo, hi)
            rec["clip"] = [lo, hi]
        m = float(vals.mean()) if mean is None else float(mean)
        s = float(vals.std()) if std is None else float(std)
        out = (x - m) / max(s, _EPS)
        if mask is not None:
            out = np.where(mask, out, 0.0).astype(np.float32)
        rec.update(mean=m, std=s, foreground_only=foreground_only)
    else:
        raise InputError(f"unknown normalisation scheme {scheme!r}; use ct, zscore, window or none")
    result = image.with_array(out.astype(np.float32, copy=False))
    hist = list(result.meta.extra.get(INTENSITY_KEY, []))
    hist.append(rec)
    result.meta.extra[INTENSITY_KEY] = hist
    return TransformResult(result, rec)


def _pair(v: Sequence[float], name: str) -> tuple[float, float]:
    if len(v) != 2 or not float(v[0]) < float(v[1]):
        raise InputError(f"{name} must be (low, high) with low < high, got {list(v)!r}")
    return float(v[0]), float(v[1])
