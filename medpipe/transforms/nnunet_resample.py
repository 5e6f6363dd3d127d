"""nnU-Net's resampling, reproduced exactly and run on our fast separable engine.

An imported nnU-Net model only agrees with nnU-Net's own predictions (>= 0.999 of voxels)
when its input is resampled the way nnU-Net resamples, and that differs from medpipe's own
rule (``resample.py``) in three ways: the target is a *shape*
(``round(old_spacing / new_spacing * old_shape)``, so the spacing is only approximately the
target), sample positions are ``(o + 0.5) * old / new - 0.5`` (pixel-area alignment), and
order 3 is a cubic *B-spline* with a global prefilter (``scipy.ndimage.zoom`` behind
``skimage.transform.resize``, mode ``edge``), not the interpolating Catmull-Rom kernel, with
the result clipped to the input's range. Anisotropic data (spacing ratio > 3) have their
coarse axis resampled separately with order 0.

``zoom`` needs 64 taps per voxel in 3D; a B-spline is separable, so we apply scipy's exact
1-D prefilter along each axis and then our banded one-pass-per-axis engine with the
B-spline kernel (4 taps per axis) — the same numbers in a fraction of the time
(``benchmarks/nnunet_compare.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medpipe.transforms.interpolation import AxisTaps, axis_taps, resample_separable

__all__ = ["compute_new_shape", "separate_axis", "resize_taps", "resize_to_shape", "bspline_taps", "resize_segmentation"]


def compute_new_shape(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]) -> list[int]:
    """nnU-Net's ``compute_new_shape``: ``round(old_spacing / new_spacing * old_shape)``."""
    return [int(round(o / n * s)) for s, o, n in zip(shape, spacing, new_spacing, strict=True)]


def _lowres_axes(spacing: Sequence[float]) -> list[int]:
    sp = np.asarray(spacing, dtype=np.float64)
    return [int(a) for a in np.where(sp.max() / sp == 1)[0]]


def separate_axis(current_spacing: Sequence[float], new_spacing: Sequence[float], *,
                  force: bool | None = None, threshold: float = 3.0) -> int | None:
    """The axis nnU-Net resamples on its own (``determine_do_sep_z_and_axis``), or None.

    The current spacing decides first, then the new one; when two or three axes share the
    largest spacing nothing is separated."""
    cur, new = np.asarray(current_spacing, float), np.asarray(new_spacing, float)
    if force is not None:
        axes = _lowres_axes(cur) if force else None
    elif cur.max() / cur.min() > threshold:
        axes = _lowres_axes(cur)
    elif new.max() / new.min() > threshold:
        axes = _lowres_axes(new)
    else:
        axes = None
    if axes is None or len(axes) != 1:
        return None
    return axes[0]


# scipy.ndimage.zoom pads by this many edge voxels before the spline prefilter in mode
# 'nearest' (``_prepad_for_spline_filter``), so the coefficients near the edges are those
# of the edge-extended signal; we do the same to get the same numbers.
_SPLINE_PAD = 12


def bspline_taps(n_in: int, n_out: int, pad: int = _SPLINE_PAD) -> AxisTaps:
    """Cubic B-spline taps on prefiltered coefficients of an axis padded by ``pad`` voxels
    each side, ``src = (o + 0.5) * n_in / n_out - 0.5`` (in unpadded voxels), coefficient
    indices clamped to the padded extent (``mode='nearest'``)."""
    a = n_in / n_out
    src = a * np.arange(n_out, dtype=np.float64) + (0.5 * a - 0.5) + pad
    i0 = np.floor(src)
    t = src - i0
    w = np.stack([(1 - t) ** 3 / 6.0, (3 * t**3 - 6 * t**2 + 4) / 6.0, (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6.0,
                  t**3 / 6.0])
    idx = np.clip(np.stack([i0 - 1, i0, i0 + 1, i0 + 2]), 0, n_in + 2 * pad - 1).astype(np.int64)
    return AxisTaps(idx, w.astype(np.float32), np.ones(n_out, dtype=bool))


def resize_taps(n_in: int, n_out: int, order: int) -> AxisTaps:
    """Taps resizing one axis from ``n_in`` to ``n_out`` samples with nnU-Net's alignment."""
    if n_in == n_out:
        return axis_taps(n_in, n_out, 1.0, 0.0, 0)
    if order == 3:
        return bspline_taps(n_in, n_out)
    a = n_in / n_out
    taps = axis_taps(n_in, n_out, a, 0.5 * a - 0.5, order)
    return AxisTaps(taps.idx, taps.weight, np.ones(n_out, dtype=bool))  # 'nearest': edges repeat, never fill


def _prefilter(x: np.ndarray, axes: Sequence[int]) -> np.ndarray:
    """B-spline coefficients along ``axes`` of the edge-padded array (as ``zoom`` computes them)."""
    from scipy.ndimage import spline_filter1d

    out = np.pad(x.astype(np.float64), [(_SPLINE_PAD, _SPLINE_PAD) if ax in axes else (0, 0) for ax in range(x.ndim)],
                 mode="edge")
    for ax in axes:
        out = spline_filter1d(out, order=3, axis=ax, mode="nearest", output=np.float64)
    return out


def resize_to_shape(array: np.ndarray, new_shape: Sequence[int], *, order: int = 3, lowres_axis: int | None = None,
                    z_order: int = 0, clip: bool = True) -> np.ndarray:
    """Resize every channel of ``(C, I, J, K)`` to ``new_shape`` as nnU-Net's
    ``resample_data_or_seg`` does for images (``is_seg=False``), as float32.

    With ``lowres_axis`` the other two axes are resized slice by slice (each slice clipped to
    its own range, as ``skimage.transform.resize`` called per slice does) and that axis with
    ``z_order``; otherwise all three at once, each channel clipped to its range."""
    array = np.asarray(array)
    shape = array.shape[1:]
    new_shape = [int(s) for s in new_shape]
    if list(shape) == new_shape:
        return array.astype(np.float32, copy=False)
    inplane = [ax for ax in range(3) if ax != lowres_axis]
    out = np.empty((array.shape[0], *new_shape), dtype=np.float32)
    for c in range(array.shape[0]):
        x = array[c].astype(np.float64)
        resized_axes = inplane if lowres_axis is not None else [0, 1, 2]
        changed = [ax for ax in resized_axes if shape[ax] != new_shape[ax]]
        if order == 3:
            x = _prefilter(x, changed)
        taps = [resize_taps(shape[ax], new_shape[ax], order) if ax in changed
                else axis_taps(x.shape[ax], x.shape[ax], 1.0, 0.0, 0) for ax in range(3)]
        y = resample_separable(x[None], tuple(taps))[0]
        if clip and order == 3:
            src = array[c]
            if lowres_axis is None:
                np.clip(y, src.min(), src.max(), out=y)
            else:
                lo = src.min(axis=tuple(inplane), keepdims=True)
                hi = src.max(axis=tuple(inplane), keepdims=True)
                np.clip(y, lo, hi, out=y)
        if lowres_axis is not None and shape[lowres_axis] != new_shape[lowres_axis]:
            ztaps = [axis_taps(s, s, 1.0, 0.0, 0) for s in y.shape]
            ztaps[lowres_axis] = resize_taps(shape[lowres_axis], new_shape[lowres_axis], z_order)
            y = resample_separable(y[None], tuple(ztaps))[0]
        out[c] = y
    return out


def _argmax_resize(seg: np.ndarray, new_shape: Sequence[int], axes: Sequence[int]) -> np.ndarray:
    """``resize_segmentation(order=1)`` along ``axes``: each label's indicator resized linearly,
    the per-voxel argmax taken; exact ties go to the nearest-neighbour label when it is one of
    them, else to the smallest (batchgenerators' ``seg_tiebreak='nearest'``)."""
    labels = np.unique(seg)
    shape = seg.shape
    lin = tuple(resize_taps(shape[ax], new_shape[ax], 1) if ax in axes else axis_taps(shape[ax], shape[ax], 1.0, 0.0, 0)
                for ax in range(3))
    near = tuple(resize_taps(shape[ax], new_shape[ax], 0) if ax in axes else axis_taps(shape[ax], shape[ax], 1.0, 0.0, 0)
                 for ax in range(3))
    if len(labels) == 1:
        return np.full(tuple(t.n_out for t in lin), labels[0], dtype=seg.dtype)
    index = np.searchsorted(labels, seg).astype(np.int16)
    nn_idx = resample_separable(index[None], near)[0]
    best = win = nn_top = None
    for i, _ in enumerate(labels):
        score = resample_separable((index == i)[None].astype(np.float32), lin)[0]
        if best is None:
            best, win = score, np.zeros(score.shape, np.int16)
            nn_top = (nn_idx == 0) & (score > 0)
            continue
        better = score > best
        tie = (score == best) & (score > 0)
        is_nn = nn_idx == i
        nn_top = np.where(better, is_nn, nn_top | (tie & is_nn))
        win[better] = i
        np.maximum(best, score, out=best)
    return labels[np.where(nn_top, nn_idx, win)].astype(seg.dtype)


def resize_segmentation(seg: np.ndarray, new_shape: Sequence[int], *, lowres_axis: int | None = None) -> np.ndarray:
    """A label map ``(I, J, K)`` resized as nnU-Net resizes segmentations (``is_seg=True``,
    order 1): per-label linear + argmax, and with ``lowres_axis`` that axis nearest."""
    new_shape = [int(s) for s in new_shape]
    if list(seg.shape) == new_shape:
        return seg
    if lowres_axis is None:
        return _argmax_resize(seg, new_shape, [0, 1, 2])
    inplane = [ax for ax in range(3) if ax != lowres_axis]
    mid = list(new_shape)
    mid[lowres_axis] = seg.shape[lowres_axis]
    out = _argmax_resize(seg, mid, inplane)
    if mid[lowres_axis] == new_shape[lowres_axis]:
        return out
    taps = [axis_taps(s, s, 1.0, 0.0, 0) for s in out.shape]
    taps[lowres_axis] = resize_taps(seg.shape[lowres_axis], new_shape[lowres_axis], 0)
    return resample_separable(out[None], tuple(taps))[0]
