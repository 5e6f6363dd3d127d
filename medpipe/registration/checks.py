"""What is checked before any registration work starts, each failure one sentence."""

from __future__ import annotations

import numpy as np

from medpipe.errors import GeometryError, InputError
from medpipe.image import Image

__all__ = ["check_volume", "check_same_modality", "check_overlap"]


def check_volume(image: Image, what: str) -> Image:
    """A 3D, finite, non-constant volume (``what`` names the file or role in the message)."""
    small = [n for n in image.shape if n < 8]
    if small:
        raise InputError(f"{what} is a 2D image or a thin slab (shape {'x'.join(map(str, image.shape))}); "
                         "registration needs 3D volumes with at least 8 voxels along every axis")
    arr = image.array
    if not np.all(np.isfinite(arr)):
        n = int(np.count_nonzero(~np.isfinite(arr)))
        raise InputError(f"{what} holds {n} NaN or infinite voxel values; fix or mask them before registering")
    if float(arr.max()) == float(arr.min()):
        raise InputError(f"{what} is constant (every voxel is {float(arr.min()):g}); there is nothing to register")
    return image


def check_same_modality(fixed: Image, moving: Image, what: str) -> None:
    """Refuse two images whose recorded modalities differ, for a same-modality model."""
    a, b = (fixed.meta.modality or "").upper(), (moving.meta.modality or "").upper()
    if a and b and a != b:
        raise InputError(f"{what} registers images of one modality, but the fixed image is {a} and the moving "
                         f"image is {b}; use method: affine or bspline (mutual information) for multi-modal pairs")


def check_overlap(fixed: Image, moving: Image, matrix: np.ndarray, minimum: float = 0.3) -> float:
    """Share of the fixed foreground that lands inside the moving foreground box after the affine.

    Below ``minimum`` the two fields of view do not cover the same anatomy (or the affine
    failed): a deformable method would only invent a warp, so it is refused.
    """
    arr = fixed.array[0]
    step = max(1, int(round((arr.size / 200_000) ** (1 / 3))))
    sub = arr[::step, ::step, ::step]
    thr = float(np.percentile(sub, 50)) if float(sub.min()) == 0.0 else float(sub.min())
    ijk = np.argwhere(sub > thr) * step
    if ijk.size == 0:
        raise InputError("the fixed image has no foreground to register")
    pts = fixed.world_coords(ijk.astype(np.float64))
    mapped = pts @ matrix[:3, :3].T + matrix[:3, 3]
    inv = np.linalg.inv(moving.affine)
    vox = mapped @ inv[:3, :3].T + inv[:3, 3]
    m = moving.array[0]
    fg = np.argwhere(m > (float(np.percentile(m, 50)) if float(m.min()) == 0.0 else float(m.min())))
    if fg.size == 0:
        raise InputError("the moving image has no foreground to register")
    lo, hi = fg.min(axis=0) - 0.5, fg.max(axis=0) + 0.5
    share = float(np.mean(np.all((vox >= lo) & (vox <= hi), axis=1)))
    if share < minimum:
        raise GeometryError(f"after affine pre-alignment only {share:.0%} of the fixed image's foreground lies inside "
                            "the moving image's field of view; the two images do not show the same anatomy "
                            f"(at least {minimum:.0%} is needed)")
    return share
