"""nnU-Net's per-channel intensity normalisation and non-zero mask, exactly as it runs them.

``transforms.intensity.normalize`` serves medpipe's own bundles (CT foreground above -500
HU, masks from a threshold). An imported nnU-Net model needs nnU-Net's definitions to the
letter: the mask is *any channel non-zero, holes filled* (``create_nonzero_mask``), z-score
with ``use_mask_for_norm`` normalises only inside it and leaves the rest untouched,
``CTNormalization`` clips to the dataset's 0.5/99.5 foreground percentiles and uses
``max(std, 1e-8)``, ``RescaleTo01`` is a min-max, ``RGBTo01`` divides by 255.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medpipe.errors import InputError

__all__ = ["nonzero_mask", "normalize_channels"]

_EPS = 1e-8


def nonzero_mask(array: np.ndarray) -> np.ndarray:
    """``(I, J, K)`` bool: voxels where any channel of ``(C, I, J, K)`` is non-zero, holes filled."""
    from scipy.ndimage import binary_fill_holes

    return binary_fill_holes(np.any(array != 0, axis=0))


def normalize_channels(array: np.ndarray, schemes: Sequence, mask: np.ndarray | None = None) -> np.ndarray:
    """Normalise each channel of ``(C, I, J, K)`` by its scheme (``bundle.Normalization``);
    ``mask`` is the filled non-zero mask (needed by z-score with ``use_mask``)."""
    if len(schemes) != array.shape[0]:
        raise InputError(f"the image has {array.shape[0]} channel(s) but the bundle normalises {len(schemes)}")
    out = np.empty(array.shape, np.float32)
    for c, norm in enumerate(schemes):
        x = array[c].astype(np.float32)  # a copy
        if norm.scheme == "ct":
            lo, hi = norm.clip
            np.clip(x, lo, hi, out=x)
            x -= np.float32(norm.mean)
            x /= np.float32(max(norm.std, _EPS))
        elif norm.scheme == "zscore":
            if norm.use_mask:
                if mask is None:
                    raise InputError("z-score with use_mask needs the non-zero mask")
                vals = x[mask]
                mean, std = (vals.mean(), vals.std()) if vals.size else (0.0, 1.0)
                x[mask] = (vals - mean) / max(std, _EPS)
            else:
                mean = float(x.mean()) if norm.mean is None else float(norm.mean)
                std = float(x.std()) if norm.std is None else float(norm.std)
                x -= np.float32(mean)
                x /= np.float32(max(std, _EPS))
        elif norm.scheme == "rescale01":
            x -= x.min()
            x /= np.float32(max(float(x.max()), _EPS))
        elif norm.scheme == "rgb01":
            if x.min() < 0 or x.max() > 255:
                raise InputError(f"channel {c} is normalised as RGB (0..255) but holds values from {x.min():g} to "
                                 f"{x.max():g}; the bundle expects 8-bit colour images")
            x /= np.float32(255.0)
        elif norm.scheme != "none":
            raise InputError(f"unknown normalisation scheme {norm.scheme!r}")
        out[c] = x
    return out
