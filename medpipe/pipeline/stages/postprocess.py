"""``postprocess``: clean a label map (largest component, holes, small islands)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from medpipe.image import Image
from medpipe.pipeline.artifacts import LabelArtifact
from medpipe.pipeline.stage import Stage, StageContext, StageParams, StageResources, register_stage
from medpipe.pipeline.stages._labels import label_names, present_labels

__all__ = ["Postprocess", "postprocess_labels"]

Classes = Literal["all"] | list[int | str] | None


def _select(labels: Image, which: Classes) -> list[int]:
    present = present_labels(labels)
    if which is None:
        return []
    if which == "all":
        return present
    names = {n: v for v, n in label_names(labels, present).items()}
    out = []
    for w in which:
        if isinstance(w, str) and not w.isdigit():
            if w in names:
                out.append(names[w])
        elif int(w) in present:
            out.append(int(w))
    return out


def _structure(connectivity: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.generate_binary_structure(3, connectivity)


def postprocess_labels(
    labels: Image,
    *,
    keep_largest: Classes = None,
    fill_holes: Classes = None,
    min_volume_ml: float = 0.0,
    connectivity: int = 3,
) -> tuple[Image, dict[str, Any]]:
    """Largest component per class, hole filling (into background only), island removal.

    Returns the cleaned labels and a report of voxels changed per class.
    """
    from scipy import ndimage

    arr = labels.array[0].copy()
    struct = _structure(connectivity)
    voxel_ml = float(np.prod(labels.spacing)) / 1000.0
    report: dict[str, Any] = {}
    names = label_names(labels)

    def boxes(value: int) -> tuple[slice, ...] | None:
        objs = ndimage.find_objects((arr == value).astype(np.int8))
        return objs[0] if objs else None

    for v in _select(labels, keep_largest):
        sl = boxes(v)
        if sl is None:
            continue
        m = arr[sl] == v
        lab, n = ndimage.label(m, struct)
        if n > 1:
            sizes = np.bincount(lab.ravel())[1:]
            drop = m & (lab != 1 + int(np.argmax(sizes)))
            arr[sl][drop] = 0
            report.setdefault(names.get(v, str(v)), {})["largest_component_removed"] = int(drop.sum())
    if min_volume_ml > 0:
        min_vox = min_volume_ml / voxel_ml
        for v in present_labels(labels):
            sl = boxes(v)
            if sl is None:
                continue
            m = arr[sl] == v
            lab, n = ndimage.label(m, struct)
            sizes = np.bincount(lab.ravel())
            small = np.flatnonzero(sizes < min_vox)
            small = small[small > 0]
            if small.size:
                drop = np.isin(lab, small)
                arr[sl][drop] = 0
                report.setdefault(names.get(v, str(v)), {})["islands_removed"] = int(drop.sum())
    for v in _select(labels, fill_holes):
        sl = boxes(v)
        if sl is None:
            continue
        m = arr[sl] == v
        filled = ndimage.binary_fill_holes(m)
        add = filled & ~m & (arr[sl] == 0)
        arr[sl][add] = v
        if add.any():
            report.setdefault(names.get(v, str(v)), {})["holes_filled"] = int(add.sum())
    return labels.with_array(arr[None]), report


@register_stage
class Postprocess(Stage):
    kind = "postprocess"
    description = "keep the largest component per class, fill holes, drop islands below a volume (ml)"

    class Params(StageParams):
        keep_largest: Literal["all"] | list[int | str] | None = None
        fill_holes: Literal["all"] | list[int | str] | None = None
        min_volume_ml: float = 0.0
        connectivity: Literal[1, 2, 3] = 3  # 3 = 26-neighbourhood

    inputs = {"labels": LabelArtifact}
    outputs = {"labels": LabelArtifact}
    resources = StageResources(threads=1, mem_mb=3000)

    def run(self, inputs: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        out, report = postprocess_labels(
            inputs["labels"],
            keep_largest=self.params.keep_largest,
            fill_holes=self.params.fill_holes,
            min_volume_ml=self.params.min_volume_ml,
            connectivity=self.params.connectivity,
        )
        ctx.facts["postprocess"] = report
        return {"labels": out}
