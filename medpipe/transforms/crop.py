"""Cropping to the foreground bounding box (nnU-Net's "crop to non-zero"), recorded for undo.

The crop is an integer index window, so it moves the affine origin by whole voxels and is
undone exactly by padding with background (``uncrop``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medpipe.errors import GeometryError
from medpipe.image import Image
from medpipe.transforms.history import TransformResult, grid_record, with_record

__all__ = ["crop_foreground", "crop_to_bbox", "foreground_bbox", "uncrop"]


def foreground_bbox(
    image: Image, threshold: float | None = None, margin: int | Sequence[int] = 0
) -> list[list[int]] | None:
    """Half-open ``[[lo, hi], ...]`` box of voxels above ``threshold`` (any channel).

    ``threshold=None`` means "non-zero". Returns None when nothing is foreground.
    """
    arr = image.array
    fg = (arr != 0).any(axis=0) if threshold is None else (arr > threshold).any(axis=0)
    if not fg.any():
        return None
    m = [int(margin)] * 3 if isinstance(margin, (int, np.integer)) else [int(v) for v in margin]
    box = []
    for ax in range(3):
        other = tuple(i for i in range(3) if i != ax)
        nz = np.flatnonzero(fg.any(axis=other))
        box.append([max(int(nz[0]) - m[ax], 0), min(int(nz[-1]) + 1 + m[ax], image.shape[ax])])
    return box


def crop_to_bbox(image: Image, bbox: Sequence[Sequence[int]]) -> TransformResult:
    """Crop to the half-open index box ``bbox`` (e.g. a box found on the image, applied to labels)."""
    box = [[int(lo), int(hi)] for lo, hi in bbox]
    for ax, (lo, hi) in enumerate(box):
        if not 0 <= lo < hi <= image.shape[ax]:
            raise GeometryError(f"crop box {box} does not fit inside an image of shape {image.shape}")
    sl = tuple(slice(lo, hi) for lo, hi in box)
    affine = image.affine.copy()
    affine[:3, 3] = image.affine[:3, :3] @ np.array([lo for lo, _ in box], float) + image.affine[:3, 3]
    result = image.with_geometry(np.ascontiguousarray(image.array[(slice(None), *sl)]), affine)
    record = {
        "op": "crop",
        "bbox": box,
        "from": grid_record(image.shape, image.affine),
        "to": grid_record(result.shape, result.affine),
    }
    return with_record(result, record)


def crop_foreground(
    image: Image, threshold: float | None = None, margin: int | Sequence[int] = 0
) -> TransformResult:
    """Crop to the box of voxels above ``threshold`` (None = non-zero) plus ``margin`` voxels.

    For CT use e.g. ``threshold=-500`` (body vs air). An image with no foreground is kept
    whole (the record still says so, so restoring is uniform).
    """
    box = foreground_bbox(image, threshold, margin)
    if box is None:
        box = [[0, s] for s in image.shape]
    return crop_to_bbox(image, box)


def uncrop(
    image: Image,
    bbox: Sequence[Sequence[int]],
    shape: Sequence[int],
    affine: np.ndarray,
    fill: float | Sequence[float] = 0.0,
) -> Image:
    """Put a cropped image back into the full grid ``(shape, affine)``, ``fill`` outside the box.

    ``fill`` may give one value per channel (e.g. 1 for a background probability channel).
    """
    box = [[int(lo), int(hi)] for lo, hi in bbox]
    if [hi - lo for lo, hi in box] != list(image.shape):
        raise GeometryError(
            f"cannot undo the crop: the image has shape {image.shape} but the recorded box {box} "
            f"has shape {tuple(hi - lo for lo, hi in box)}"
        )
    fills = np.broadcast_to(np.asarray(fill, dtype=np.float64), (image.n_channels,))
    out = np.empty((image.n_channels, *[int(s) for s in shape]), dtype=image.array.dtype)
    for c in range(image.n_channels):
        out[c] = fills[c]
    out[(slice(None), *(slice(lo, hi) for lo, hi in box))] = image.array
    return image.with_geometry(out, np.asarray(affine, dtype=np.float64))
