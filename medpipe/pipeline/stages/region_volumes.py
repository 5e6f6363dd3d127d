"""``region_volumes``: how much of each segmented structure lies in each atlas region.

The question a lesion report answers — "8.4 ml of lesion, 6.1 ml of it in the right frontal
lobe" — needs two label maps on one grid: the segmentation and the propagated atlas regions.
The table holds, per region, its volume and the volume of every structure inside it, and per
structure, the regions it occupies largest first (``where``), so a report can name the
region a lesion sits in without reading the whole matrix.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medpipe.errors import GeometryError
from medpipe.image import Image
from medpipe.pipeline.artifacts import LabelArtifact, TableArtifact
from medpipe.pipeline.stage import Stage, StageContext, StageParams, StageResources, register_stage
from medpipe.pipeline.stages._labels import label_names, structure_values

__all__ = ["RegionVolumes", "region_volumes"]


def region_volumes(labels: Image, regions: Image) -> dict[str, Any]:
    """``{"regions": {region: {volume_ml, <structure>_ml...}}, "structures": {name: {volume_ml, where}}}``."""
    if not labels.same_grid(regions):
        raise GeometryError(f"region_volumes: the segmentation (shape {labels.shape}) and the atlas regions "
                            f"(shape {regions.shape}) are not on the same grid; propagate the atlas onto the image "
                            "the segmentation was made on")
    voxel_ml = float(abs(np.linalg.det(labels.affine[:3, :3]))) / 1000.0
    lab = labels.array[0].astype(np.int64).ravel()
    reg = regions.array[0].astype(np.int64).ravel()
    s_values, r_values = structure_values(labels), structure_values(regions)
    s_names = label_names(labels, s_values)
    r_names = label_names(regions, r_values)
    n_s, n_r = max(s_values, default=0) + 1, max(r_values, default=0) + 1
    joint = np.bincount(reg * n_s + lab, minlength=n_r * n_s).reshape(n_r, n_s)  # region x structure voxels
    out_regions: dict[str, Any] = {}
    for r, rname in r_names.items():
        row: dict[str, Any] = {"value": r, "volume_ml": round(float(joint[r].sum()) * voxel_ml, 4)}
        for s, sname in s_names.items():
            row[f"{sname}_ml"] = round(float(joint[r, s]) * voxel_ml, 4)
        out_regions[rname] = row
    out_structures: dict[str, Any] = {}
    for s, sname in s_names.items():
        total = float(joint[:, s].sum()) * voxel_ml
        parts = sorted(((float(joint[r, s]) * voxel_ml, rname) for r, rname in r_names.items() if joint[r, s]),
                       reverse=True)
        outside = float(joint[0, s]) * voxel_ml
        out_structures[sname] = {
            "volume_ml": round(total, 4),
            "where": [{"region": n, "volume_ml": round(v, 4), "fraction": round(v / total, 4) if total else 0.0}
                      for v, n in parts],
            "outside_regions_ml": round(outside, 4),
        }
    return {"voxel_volume_ml": voxel_ml, "regions": out_regions, "structures": out_structures}


@register_stage
class RegionVolumes(Stage):
    kind = "region_volumes"
    description = "volume of every segmented structure inside every atlas region (e.g. lesion ml per lobe)"

    class Params(StageParams):
        pass

    inputs = {"labels": LabelArtifact, "regions": LabelArtifact}
    outputs = {"table": TableArtifact}
    resources = StageResources(threads=1, mem_mb=2000)

    def run(self, inputs: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        return {"table": region_volumes(inputs["labels"], inputs["regions"])}
