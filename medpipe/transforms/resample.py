"""Resampling: to a target spacing (nnU-Net style) and onto any world-space grid.

``resample_to_spacing`` follows nnU-Net's preprocessing (see REFERENCES.md): images with
cubic interpolation, label maps one-hot linear (each label's mask interpolated, then the
arg-max, background included), and for anisotropic data (max/min spacing > 3) the coarse
axis separately with order 0. The new grid keeps the image's direction cosines and the
world position of the volume's centre; spacing is exactly the target and the shape is
the rounded physical extent, so the extent changes by less than one output voxel.

``resample_to_grid`` maps an image onto any reference grid (shape + affine) through world
coordinates. When the voxel mapping is a signed permutation plus an integer shift (undoing
a reorientation or a crop) it is plain array indexing: exact, for any dtype. Axis-aligned
mappings use the fast separable engine (``interpolation.py``); oblique ones fall back to
``scipy.ndimage.affine_transform``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from medpipe.errors import GeometryError, InputError
from medpipe.image import Image
from medpipe.transforms.history import TransformResult, grid_record, with_record
from medpipe.transforms.interpolation import AxisTaps, axis_taps, resample_separable

__all__ = ["resample_to_spacing", "resample_to_grid", "ANISOTROPY_THRESHOLD", "LabelMode"]

ANISOTROPY_THRESHOLD = 3.0
LabelMode = Literal["onehot", "nearest"]


# -- public API -----------------------------------------------------------------------


def resample_to_spacing(
    image: Image,
    spacing: float | Sequence[float | None],
    *,
    order: int | None = None,
    label_mode: LabelMode = "onehot",
    anisotropic: bool = True,
) -> TransformResult:
    """Resample to ``spacing`` mm (a number or one per axis; ``None`` keeps that axis).

    ``order`` defaults to 3 for images; label maps use ``label_mode`` ("onehot" = per-label
    linear + arg-max, "nearest"). With ``anisotropic`` (nnU-Net's rule) the coarse axis of
    data whose spacing ratio exceeds 3 is interpolated with order 0.

    Example:
        >>> img2, rec = resample_to_spacing(img, 1.5)   # doctest: +SKIP
    """
    old_sp = np.asarray(image.spacing, dtype=np.float64)
    new_sp = _target_spacing(spacing, old_sp)
    old_shape = np.asarray(image.shape)
    new_shape = np.maximum(1, np.round(old_shape * old_sp / new_sp)).astype(int)

    affine = image.affine.copy()
    affine[:3, :3] = image.affine[:3, :3] * (new_sp / old_sp)[None, :]
    c_old = (old_shape - 1) / 2.0
    c_new = (new_shape - 1) / 2.0
    centre = image.affine[:3, :3] @ c_old + image.affine[:3, 3]
    affine[:3, 3] = centre - affine[:3, :3] @ c_new

    base = _default_order(image, order, label_mode)
    orders = [base] * 3
    lowres = _separate_axis(old_sp, new_sp) if anisotropic else None
    if lowres is not None:
        orders[lowres] = 0

    a = new_sp / old_sp
    b = c_old - c_new * a
    out = _resample_axis_aligned(
        image, (0, 1, 2), a, b, tuple(int(s) for s in new_shape), orders, label_mode, fill=0.0
    )
    result = image.with_geometry(out, affine)
    record = {
        "op": "resample",
        "spacing": [float(s) for s in new_sp],
        "orders": orders,
        "label_mode": label_mode if image.is_label else None,
        "from": grid_record(image.shape, image.affine),
        "to": grid_record(result.shape, result.affine),
    }
    return with_record(result, record)


def resample_to_grid(
    image: Image,
    reference_shape: Sequence[int],
    reference_affine: np.ndarray,
    *,
    order: int | None = None,
    label_mode: LabelMode = "onehot",
    fill: float | None = None,
) -> Image:
    """Resample ``image`` onto the grid ``(reference_shape, reference_affine)`` in world space.

    Signed-permutation + integer-shift mappings are done by exact indexing (no
    interpolation, dtype kept). ``fill`` is used outside the image's extent (default 0 for
    label maps, the image minimum otherwise). No history record: this is the primitive
    that ``restore_geometry`` uses to undo recorded steps.
    """
    shape = tuple(int(s) for s in reference_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise GeometryError(f"reference grid shape must be three positive sizes, got {tuple(reference_shape)}")
    ref = np.asarray(reference_affine, dtype=np.float64)
    if fill is None:
        fill = 0.0 if image.is_label else float(np.min(image.array)) if image.array.size else 0.0
    mapping = np.linalg.inv(image.affine) @ ref  # reference voxel -> source voxel
    perm = _axis_permutation(mapping[:3, :3])
    if perm is None:
        out = _resample_general(image, mapping, shape, order, label_mode, fill)
        return image.with_geometry(out, ref)
    a = np.array([mapping[perm[j], j] for j in range(3)])
    b = np.array([mapping[perm[j], 3] for j in range(3)])
    exact = bool(np.allclose(np.abs(a), 1.0, atol=1e-6) and np.allclose(b, np.round(b), atol=1e-4))
    if exact:
        orders = [0, 0, 0]
    else:
        orders = [_default_order(image, order, label_mode)] * 3
    out = _resample_axis_aligned(image, perm, a, b, shape, orders, label_mode, fill, exact=exact)
    return image.with_geometry(out, ref)


# -- helpers ----------------------------------------------------------------------------


def _target_spacing(spacing: float | Sequence[float | None], old_sp: np.ndarray) -> np.ndarray:
    if isinstance(spacing, (int, float)):
        vals: list[float | None] = [float(spacing)] * 3
    else:
        vals = list(spacing)
    if len(vals) != 3:
        raise InputError(f"resample spacing needs one value or three (x, y, z in mm), got {spacing!r}")
    out = np.array([old_sp[i] if v is None else float(v) for i, v in enumerate(vals)])
    if not np.all(np.isfinite(out)) or np.any(out <= 0):
        raise InputError(f"resample spacing must be positive millimetres, got {spacing!r}")
    return out


def _default_order(image: Image, order: int | None, label_mode: str) -> int:
    if image.is_label:
        if label_mode not in ("onehot", "nearest"):
            raise InputError(f"label_mode must be 'onehot' or 'nearest', got {label_mode!r}")
        return 1 if label_mode == "onehot" else 0
    if order is None:
        return 3
    if order not in (0, 1, 3):
        raise InputError(f"interpolation order must be 0, 1 or 3, got {order}")
    return order


def _separate_axis(old_sp: np.ndarray, new_sp: np.ndarray) -> int | None:
    """nnU-Net's rule: the coarse axis of anisotropic (ratio > 3) data, else None."""
    for sp in (old_sp, new_sp):
        if sp.max() / sp.min() > ANISOTROPY_THRESHOLD:
            return int(np.argmax(sp))
    return None


def _axis_permutation(r: np.ndarray) -> tuple[int, int, int] | None:
    """``perm[j]`` = the source axis that output axis j moves along, if the map is axis-aligned."""
    perm = []
    for j in range(3):
        col = np.abs(r[:, j])
        i = int(np.argmax(col))
        if np.any(np.delete(col, i) > 1e-6 * col[i]):
            return None
        perm.append(i)
    if len(set(perm)) != 3:
        return None
    return tuple(perm)  # type: ignore[return-value]


def _resample_axis_aligned(
    image: Image,
    perm: tuple[int, int, int],
    a: np.ndarray,
    b: np.ndarray,
    out_shape: tuple[int, int, int],
    orders: list[int],
    label_mode: str,
    fill: float,
    exact: bool = False,
) -> np.ndarray:
    arr = np.transpose(image.array, (0, *(p + 1 for p in perm)))
    n_in = arr.shape[1:]
    if image.is_label and not exact and any(o > 0 for o in orders):
        taps = tuple(axis_taps(n_in[j], out_shape[j], a[j], b[j], orders[j]) for j in range(3))
        return np.stack([_labels_onehot(ch, taps) for ch in arr])  # type: ignore[arg-type]
    taps = tuple(axis_taps(n_in[j], out_shape[j], a[j], b[j], orders[j]) for j in range(3))
    out = resample_separable(arr, taps, fill=fill)  # type: ignore[arg-type]
    if image.is_label:
        return out.astype(image.array.dtype, copy=False)
    return out


def _labels_onehot(lab: np.ndarray, taps: tuple[AxisTaps, AxisTaps, AxisTaps]) -> np.ndarray:
    """Arg-max over linearly interpolated one-hot masks, computed label by label in its box.

    Background is the remainder ``1 - sum(p_label)`` (interpolation weights sum to one),
    so the result equals arg-max over the full one-hot stack without ever holding it.
    """
    from scipy import ndimage

    out_shape = tuple(t.n_out for t in taps)
    best = np.zeros(out_shape, np.float32)
    total = np.zeros(out_shape, np.float32)
    arg = np.zeros(out_shape, lab.dtype)
    if lab.dtype.kind == "i" and lab.min() < 0:
        raise InputError("label maps must hold non-negative integers")
    # One pass finds every label's bounding box; each label then works inside its own box.
    boxes = ndimage.find_objects(lab.astype(np.int64, copy=False) if lab.dtype.kind not in "iu" else lab)
    for value, box in enumerate(boxes, start=1):
        if box is None:
            continue
        src_slices, dst_slices, sub_taps = [], [], []
        for ax in range(3):
            lo, hi = int(box[ax].start), int(box[ax].stop) - 1
            t = taps[ax]
            touches = np.any((t.idx >= lo) & (t.idx <= hi) & (t.weight != 0), axis=0) & t.inside
            d = np.flatnonzero(touches)
            if d.size == 0:
                break
            d0, d1 = int(d[0]), int(d[-1]) + 1
            b0, b1 = max(lo - 4, 0), min(hi + 5, lab.shape[ax])
            src_slices.append(slice(b0, b1))
            dst_slices.append(slice(d0, d1))
            sub_taps.append(
                AxisTaps(
                    np.clip(t.idx[:, d0:d1] - b0, 0, b1 - b0 - 1),
                    t.weight[:, d0:d1],
                    t.inside[d0:d1],
                )
            )
        else:
            block = (lab[tuple(src_slices)] == value).astype(np.float32)
            p = resample_separable(block, tuple(sub_taps), fill=0.0)  # type: ignore[arg-type]
            region = tuple(dst_slices)
            total[region] += p
            b_r = best[region]
            upd = p > b_r
            b_r[upd] = p[upd]
            arg[region][upd] = value
    keep = best > (1.0 - total)
    return np.where(keep, arg, np.zeros((), lab.dtype))


def _resample_general(
    image: Image,
    mapping: np.ndarray,
    shape: tuple[int, int, int],
    order: int | None,
    label_mode: str,
    fill: float,
) -> np.ndarray:
    """Oblique mapping: scipy's affine_transform (spline order 3, linear, nearest)."""
    from scipy import ndimage

    mat, off = mapping[:3, :3], mapping[:3, 3]
    grid = np.indices(shape, dtype=np.float64).reshape(3, -1)
    src = mat @ grid + off[:, None]
    n = np.asarray(image.shape)[:, None]
    inside = np.all((src >= -0.5 - 1e-6) & (src <= n - 0.5 + 1e-6), axis=0).reshape(shape)
    o = _default_order(image, order, label_mode)

    def warp(vol: np.ndarray, k: int) -> np.ndarray:
        return ndimage.affine_transform(vol, mat, off, output_shape=shape, order=k, mode="nearest")

    chans = []
    for ch in image.array:
        if image.is_label and o == 1:
            best = np.zeros(shape, np.float32)
            arg = np.zeros(shape, ch.dtype)
            total = np.zeros(shape, np.float32)
            for value in np.unique(ch):
                if value == 0:
                    continue
                p = warp((ch == value).astype(np.float32), 1)
                total += p
                upd = p > best
                best[upd] = p[upd]
                arg[upd] = value
            out = np.where(best > 1.0 - total, arg, np.zeros((), ch.dtype))
        elif image.is_label:
            out = warp(ch, 0)
        else:
            out = warp(ch.astype(np.float32), o)
        chans.append(np.where(inside, out, np.asarray(fill, dtype=out.dtype)))
    return np.stack(chans)
