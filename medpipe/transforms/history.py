"""The geometry history: what every grid-changing transform did, so it can be undone exactly.

Each transform (reorient, resample, crop) returns its new Image *and* a JSON record of
the grid before and after plus the exact operation parameters (the "deterministic twin"
of the operation). The record is appended to ``image.meta.extra["geometry_history"]``;
``medpipe.transforms.restore.restore_geometry`` replays the inverses from that list. The
history lives in the image metadata, so it survives the NIfTI + JSON sidecar file form of
artifacts and a stage running in another process.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from medpipe.image import Image

__all__ = ["HISTORY_KEY", "TransformResult", "geometry_history", "with_record", "grid_record"]

HISTORY_KEY = "geometry_history"


class TransformResult(NamedTuple):
    """A transformed image and the JSON record of what was done (also in its history)."""

    image: Image
    record: dict[str, Any]


def geometry_history(image: Image) -> list[dict[str, Any]]:
    """The image's geometry records, oldest first (empty for an untouched input)."""
    return list(image.meta.extra.get(HISTORY_KEY, []))


def grid_record(shape: tuple[int, ...], affine: np.ndarray) -> dict[str, Any]:
    """A JSON form of a voxel grid."""
    return {"shape": [int(s) for s in shape], "affine": np.asarray(affine, dtype=np.float64).tolist()}


def with_record(image: Image, record: dict[str, Any]) -> TransformResult:
    """Append ``record`` to ``image``'s history (the image is already a fresh copy)."""
    hist = geometry_history(image)
    hist.append(record)
    image.meta.extra[HISTORY_KEY] = hist
    return TransformResult(image, record)
