"""Geometry and intensity transforms: pure functions, each recording how to undo itself.

Every grid change (``reorient``, ``resample_to_spacing``, ``crop_foreground``) returns
``(image, record)`` and appends the record to ``image.meta.extra["geometry_history"]``;
``restore_geometry`` replays the inverses so outputs land on the input's exact grid.
"""

from __future__ import annotations

from medpipe.transforms.crop import crop_foreground, crop_to_bbox, foreground_bbox, uncrop
from medpipe.transforms.history import HISTORY_KEY, TransformResult, geometry_history
from medpipe.transforms.intensity import normalize
from medpipe.transforms.orientation import reorient
from medpipe.transforms.resample import resample_to_grid, resample_to_spacing
from medpipe.transforms.restore import restore_geometry

__all__ = [
    "HISTORY_KEY",
    "TransformResult",
    "crop_foreground",
    "crop_to_bbox",
    "foreground_bbox",
    "geometry_history",
    "normalize",
    "reorient",
    "resample_to_grid",
    "resample_to_spacing",
    "restore_geometry",
    "uncrop",
]
