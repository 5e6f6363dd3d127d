"""Reorientation: a pure axis permutation/flip, so it is exact and exactly invertible.

nibabel.orientations computes which axes to swap and flip (for oblique images it picks
the closest axes, so the array is never interpolated); this module applies that to our
channel-first arrays, updates the affine so every voxel keeps its world position, and
records the step for ``restore_geometry``.
"""

from __future__ import annotations

import numpy as np

from medpipe.errors import InputError
from medpipe.image import Image
from medpipe.transforms.history import TransformResult, grid_record, with_record

__all__ = ["reorient", "apply_ornt"]


def apply_ornt(image: Image, transform: np.ndarray) -> Image:
    """Apply a nibabel orientation transform (rows: target axis, flip) to an Image."""
    import nibabel.orientations as nio

    arr = np.stack([nio.apply_orientation(ch, transform) for ch in image.array])
    affine = image.affine @ nio.inv_ornt_aff(transform, image.shape)
    return image.with_geometry(np.ascontiguousarray(arr), affine)


def reorient(image: Image, codes: str = "RAS") -> TransformResult:
    """Permute/flip axes so that +I, +J, +K point to ``codes`` (e.g. "RAS", "LPS").

    Example:
        >>> ras, rec = reorient(img, "RAS")   # doctest: +SKIP
    """
    import nibabel.orientations as nio

    codes = str(codes).upper()
    if len(codes) != 3 or {c for c in codes} - set("RLAPSI"):
        raise InputError(f"orientation codes must be three letters from R/L, A/P, S/I, got {codes!r}")
    try:
        target = nio.axcodes2ornt(tuple(codes))
    except ValueError as e:
        raise InputError(f"orientation codes {codes!r} repeat an axis ({e})") from None
    start = nio.io_orientation(image.affine)
    transform = nio.ornt_transform(start, target)
    result = apply_ornt(image, transform)
    record = {
        "op": "reorient",
        "codes": codes,
        "from_codes": image.orientation,
        "transform": transform.tolist(),
        "inverse": nio.ornt_transform(target, start).tolist(),
        "from": grid_record(image.shape, image.affine),
        "to": grid_record(result.shape, result.affine),
    }
    return with_record(result, record)
