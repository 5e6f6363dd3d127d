"""``statistics``: per-structure volume and intensity (like TotalSegmentator's statistics.json)."""

from __future__ import annotations

from typing import Any

import numpy as np

from medpipe.errors import GeometryError
from medpipe.image import Image
from medpipe.pipeline.artifacts import ImageArtifact, LabelArtifact, TableArtifact
from medpipe.pipeline.stage import Stage, StageContext, StageParams, StageResources, register_stage
from medpipe.pipeline.stages._labels import label_names, structure_values

__all__ = ["Statistics", "label_statistics"]


def label_statistics(labels: Image, image: Image | None = None) -> dict[str, Any]:
    """``{name: {value, voxels, volume_ml, mean, std, min, max}}`` for every named or present label.

    Volume = voxel count x voxel volume (from the affine) / 1000. Intensities come from
    channel 0 of ``image``, which must share the label map's grid.
    """
    if image is not None and not labels.same_grid(image):
        raise GeometryError(
            f"statistics: the label map (shape {labels.shape}) and the image (shape {image.shape}) "
            "are not on the same grid; restore the labels' geometry first"
        )
    voxel_ml = float(abs(np.linalg.det(labels.affine[:3, :3]))) / 1000.0
    arr = labels.array[0]
    values = structure_values(labels)
    counts = np.bincount(arr.ravel().astype(np.int64), minlength=max(values, default=0) + 1)
    intens = image.array[0] if image is not None else None
    out: dict[str, Any] = {}
    for v, name in label_names(labels, values).items():
        n = int(counts[v]) if v < counts.size else 0
        row: dict[str, Any] = {"value": v, "voxels": n, "volume_ml": round(n * voxel_ml, 4)}
        if intens is not None:
            if n:
                vals = intens[arr == v].astype(np.float64)
                row.update(mean=float(vals.mean()), std=float(vals.std()), min=float(vals.min()), max=float(vals.max()))
            else:
                row.update(mean=None, std=None, min=None, max=None)
        out[name] = row
    return {
        "voxel_volume_ml": voxel_ml,
        "spacing_mm": [round(s, 6) for s in labels.spacing],
        "shape": list(labels.shape),
        "structures": out,
    }


@register_stage
class Statistics(Stage):
    kind = "statistics"
    description = "per-label volume (ml), voxel count and mean/std intensity of the image"

    class Params(StageParams):
        pass

    inputs = {"labels": LabelArtifact, "image": ImageArtifact}
    optional_inputs = frozenset({"image"})
    outputs = {"table": TableArtifact}
    resources = StageResources(threads=1, mem_mb=2000)

    def run(self, inputs: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        return {"table": label_statistics(inputs["labels"], inputs.get("image"))}
