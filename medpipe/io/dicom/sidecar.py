"""The JSON sidecar written next to every converted volume.

NIfTI has no room for DICOM provenance; like dcm2niix's BIDS sidecar we write the key
tags, plus the geometry exactly as medpipe holds it (RAS+ affine, spacing, axis codes)
and every warning raised while loading, so a reader can tell a resampled series from
an untouched one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.image import Image
from medpipe.io.atomic import atomic_path

__all__ = ["sidecar_dict", "write_sidecar"]


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float | int | str | bool) or x is None:
        return x
    return str(x)


def sidecar_dict(image: Image) -> dict[str, Any]:
    """Key DICOM tags + geometry + warnings for ``image``."""
    import medpipe

    extra = dict(image.meta.extra)
    warnings = extra.pop("warnings", [])
    sop = extra.pop("SOPInstanceUIDs", [])
    frames = extra.pop("FrameNumbers", [])
    return _clean(
        {
            "medpipe_version": getattr(medpipe, "__version__", ""),
            "modality": image.meta.modality,
            "series_uid": image.meta.series_uid,
            "description": image.meta.description,
            "dicom": extra,
            "geometry": {
                "shape": list(image.shape),
                "channels": image.n_channels,
                "dtype": str(image.array.dtype),
                "spacing": [round(s, 6) for s in image.spacing],
                "origin": list(image.origin),
                "affine_ras": image.affine.tolist(),
                "orientation": image.orientation,
                "oblique": image.is_oblique(),
            },
            "warnings": list(warnings),
            "source_files": list(image.meta.source_files),
            "SOPInstanceUIDs": list(sop),
            "FrameNumbers": list(frames),
        }
    )


def write_sidecar(image: Image, path: str | Path, overwrite: bool = True) -> Path:
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(sidecar_dict(image), indent=2) + "\n")
    return path
