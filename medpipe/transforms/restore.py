"""The inverse path: bring a label map or probabilities back onto the input's exact grid.

``restore_geometry`` replays the inverses of the grid changes recorded in
``meta.extra["geometry_history"]`` (newest first): an un-crop pads with background, an
un-resample resamples back to the exact recorded shape and affine (one-hot linear for
label maps, linear for probabilities), an un-reorient applies the inverse axis
permutation. Reorient and crop are undone exactly; only resampling interpolates. Before
and after each step the image must sit on the grid the record says, and at the end its
shape and affine must equal the reference's, else ``GeometryError``: a mask is never
written on a grid that is not the input's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medpipe.errors import GeometryError
from medpipe.image import Image
from medpipe.transforms.crop import uncrop
from medpipe.transforms.history import HISTORY_KEY, geometry_history
from medpipe.transforms.orientation import apply_ornt
from medpipe.transforms.resample import resample_to_grid

__all__ = ["restore_geometry"]

_ATOL = 1e-4


def restore_geometry(
    image: Image,
    reference: Image,
    *,
    history: Sequence[dict[str, Any]] | None = None,
    fill: float | Sequence[float] | None = None,
    world_fallback: bool = True,
) -> Image:
    """Map ``image`` (labels or probabilities on the processed grid) onto ``reference``'s grid.

    ``history`` defaults to ``image``'s own geometry history; the steps the reference
    already carries are not undone. ``fill`` (scalar or per channel) is used where the
    processed grid did not cover the reference: 0 for label maps; for probability maps
    that sum to one, 1 for channel 0 (background) and 0 elsewhere. Without any history
    and ``world_fallback``, the image is resampled onto the reference grid through world
    coordinates (still geometrically right, just not a replay).
    """
    steps = list(geometry_history(image) if history is None else history)
    ref_hist = geometry_history(reference)
    if steps[: len(ref_hist)] == ref_hist:
        steps = steps[len(ref_hist) :]
    fills = _fills(image, fill)
    if image.n_channels > 1 and not image.is_label:
        chans = [
            _restore_channel(_channel(image, c), reference, steps, fills[c], world_fallback)
            for c in range(image.n_channels)
        ]
        out = chans[0].with_geometry(np.concatenate([c.array for c in chans]), reference.affine)
    else:
        out = _restore_channel(image, reference, steps, fills[0], world_fallback)
    out.meta.extra[HISTORY_KEY] = ref_hist
    return out


def _channel(image: Image, c: int) -> Image:
    return Image(image.array[c : c + 1], image.affine.copy(), image.meta.copy(), image.is_label)


def _fills(image: Image, fill: float | Sequence[float] | None) -> list[float]:
    n = image.n_channels
    if fill is not None:
        return [float(v) for v in np.broadcast_to(np.asarray(fill, dtype=np.float64), (n,))]
    if image.is_label or n == 1:
        return [0.0] * n
    sums = image.array.sum(axis=0, dtype=np.float64)
    if np.allclose(sums, 1.0, atol=1e-3):
        return [1.0] + [0.0] * (n - 1)
    return [0.0] * n


def _check_grid(image: Image, grid: dict[str, Any], what: str) -> Image:
    shape = tuple(grid["shape"])
    affine = np.asarray(grid["affine"], dtype=np.float64)
    if image.shape != shape or not np.allclose(image.affine, affine, atol=_ATOL):
        raise GeometryError(
            f"cannot restore the geometry: {what} the image should have shape {shape} and the recorded "
            f"affine, but it has shape {image.shape} and affine {np.round(image.affine, 4).tolist()}"
        )
    # Snap to the recorded affine so rounding never accumulates across steps.
    return Image(image.array, affine, image.meta, image.is_label)


def _restore_channel(
    image: Image, reference: Image, steps: list[dict[str, Any]], fill: float, world_fallback: bool
) -> Image:
    x = image
    if not steps and not x.same_grid(reference, atol=_ATOL):
        if not world_fallback:
            raise GeometryError(
                f"cannot restore the geometry: the image (shape {x.shape}) carries no geometry history and "
                f"does not sit on the reference grid (shape {reference.shape})"
            )
        x = resample_to_grid(x, reference.shape, reference.affine, order=1, fill=fill)
    for step in reversed(steps):
        op = step.get("op")
        x = _check_grid(x, step["to"], f"before undoing '{op}'")
        src = step["from"]
        if op == "crop":
            x = uncrop(x, step["bbox"], src["shape"], np.asarray(src["affine"]), fill=fill)
        elif op == "resample":
            x = resample_to_grid(x, src["shape"], np.asarray(src["affine"]), order=1, fill=fill)
        elif op == "reorient":
            x = apply_ornt(x, np.asarray(step["inverse"], dtype=np.float64))
        else:
            raise GeometryError(f"cannot restore the geometry: unknown recorded step {op!r}")
        x = _check_grid(x, src, f"after undoing '{op}'")
    if x.shape != reference.shape or not np.allclose(x.affine, reference.affine, atol=_ATOL):
        raise GeometryError(
            f"the restored image has shape {x.shape} and affine {np.round(x.affine, 4).tolist()}, "
            f"but the reference input has shape {reference.shape} and affine "
            f"{np.round(reference.affine, 4).tolist()}; the geometry history does not lead back to the input"
        )
    return Image(x.array, reference.affine.copy(), x.meta, x.is_label)
