"""3D Slicer's segmentation file (``.seg.nrrd``): a label map with segment names and colours.

Slicer opens a plain NRRD as a volume; a ``.seg.nrrd`` with the ``Segment<i>_*`` and
``Segmentation_*`` header fields opens as a segmentation node whose segments carry the
bundle's names and colours. ``slicerio`` (the Slicer project's own reader/writer) writes
and reads the fields; this module maps them to and from medpipe's RAS+ ``Image`` with
``meta.extra["labels"]``/``["colors"]``, as every other volume format does.

Example:
    >>> write_seg_nrrd(labels, "organs.seg.nrrd", {1: "liver"}, {1: (220, 90, 60)})  # doctest: +SKIP
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.errors import InputError
from medpipe.image import Image, ImageMeta
from medpipe.io.atomic import atomic_path

__all__ = ["write_seg_nrrd", "read_seg_nrrd", "SEG_NRRD_SUFFIX"]

SEG_NRRD_SUFFIX = ".seg.nrrd"
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _segment_id(name: str, value: int, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_") or f"Segment_{value}"
    sid = base if base not in taken else f"{base}_{value}"
    taken.add(sid)
    return sid


def write_seg_nrrd(
    labels: Image,
    path: str | Path,
    names: dict[int, str],
    colors: dict[int, tuple[int, int, int]] | None = None,
) -> Path:
    """Write ``labels`` (one channel of integer values) as a Slicer segmentation, atomically.

    ``names`` lists every segment (value -> name), present or not, so a structure the model
    found nothing of is still an (empty) named segment; ``colors`` are 0-255 RGB."""
    import slicerio

    path = Path(path)
    if labels.n_channels != 1:
        raise InputError(f"{path}: a segmentation needs a single-channel label map, got {labels.n_channels} channels")
    voxels = labels.array[0]
    if not np.issubdtype(voxels.dtype, np.integer):
        voxels = np.rint(voxels)
    hi = int(voxels.max()) if voxels.size else 0
    voxels = voxels.astype(np.uint8 if hi < 256 else np.uint16)
    colors = colors or {}
    taken: set[str] = set()
    segments: list[dict[str, Any]] = []
    for value in sorted(names):
        mask = voxels == value
        idx = np.nonzero(mask)
        extent = [int(x) for a in idx for x in (a.min(), a.max())] if mask.any() else [0, -1, 0, -1, 0, -1]
        rgb = colors.get(value, (128, 128, 128))
        segments.append({
            "id": _segment_id(names[value], value, taken), "name": names[value],
            "color": [round(float(c) / 255.0, 6) for c in rgb], "labelValue": int(value), "layer": 0,
            "extent": extent,
        })
    seg = {
        "voxels": np.ascontiguousarray(voxels), "ijkToLPS": _LPS @ labels.affine, "segments": segments,
        "containedRepresentationNames": ["Binary labelmap"], "masterRepresentation": "Binary labelmap",
    }
    with atomic_path(path) as tmp:
        slicerio.write_segmentation(str(tmp), seg)
    return path


def read_seg_nrrd(path: str | Path) -> Image:
    """A ``.seg.nrrd`` as a RAS+ label map; names/colours in ``meta.extra`` (0-255 RGB).

    Overlapping segments (Slicer's layers) cannot be one label map and are refused."""
    import slicerio

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    try:
        seg = slicerio.read_segmentation(str(path))
    except Exception as exc:
        raise InputError(f"{path} could not be read as a Slicer segmentation ({type(exc).__name__}: {exc})") from None
    voxels = np.asarray(seg["voxels"])
    if voxels.ndim != 3:
        raise InputError(f"{path} holds overlapping segments (layers), which one label map cannot represent")
    names: dict[int, str] = {}
    colors: dict[int, list[int]] = {}
    for s in seg.get("segments", []):
        value = int(s.get("labelValue", 0))
        names[value] = str(s.get("name", s.get("id", f"label_{value}")))
        if s.get("color") is not None:
            colors[value] = [int(round(float(c) * 255)) for c in s["color"]]
    affine = _LPS @ np.asarray(seg["ijkToLPS"], dtype=np.float64)
    meta = ImageMeta(extra={"labels": names, "colors": colors})
    meta.source_files = [str(path)]
    return Image(voxels[None], affine, meta, is_label=True)
