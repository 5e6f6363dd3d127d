"""``restore_geometry`` / ``restore_probabilities``: outputs back onto the input's exact grid.

The recorded geometry history (of the labels themselves, or of the ``processed`` image the
model saw) is replayed backwards; the result must have exactly the reference's shape and
affine (GeometryError otherwise). See medpipe.transforms.restore.
"""

from __future__ import annotations

from typing import Any

from medpipe.image import Image
from medpipe.pipeline.artifacts import ImageArtifact, LabelArtifact
from medpipe.pipeline.stage import Stage, StageContext, StageParams, StageResources, register_stage

__all__ = ["RestoreGeometry", "RestoreProbabilities"]


def _restore(x: Image, inputs: dict[str, Any], ctx: StageContext) -> Image:
    from medpipe.transforms import geometry_history, restore_geometry

    reference: Image = inputs["reference"]
    history = None
    if not geometry_history(x) and "processed" in inputs:
        history = geometry_history(inputs["processed"])
    if not (history or geometry_history(x)) and not x.same_grid(reference):
        ctx.warn(
            f"stage {ctx.stage!r}: the input carries no geometry history; resampling it onto the "
            "reference grid through world coordinates"
        )
    out = restore_geometry(x, reference, history=history)
    ctx.facts["restored_to"] = {"shape": list(out.shape), "from_shape": list(x.shape)}
    return out


@register_stage
class RestoreGeometry(Stage):
    kind = "restore_geometry"
    description = "bring a label map back onto the reference (input) grid by undoing the recorded steps"

    class Params(StageParams):
        pass

    inputs = {"labels": LabelArtifact, "reference": ImageArtifact, "processed": ImageArtifact}
    optional_inputs = frozenset({"processed"})
    outputs = {"labels": LabelArtifact}
    resources = StageResources(threads=1, mem_mb=3000)

    def run(self, inputs: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        return {"labels": _restore(inputs["labels"], inputs, ctx)}


@register_stage
class RestoreProbabilities(Stage):
    kind = "restore_probabilities"
    description = "bring probability maps back onto the reference grid (linear; background refilled)"

    class Params(StageParams):
        pass

    inputs = {"probabilities": ImageArtifact, "reference": ImageArtifact, "processed": ImageArtifact}
    optional_inputs = frozenset({"processed"})
    outputs = {"probabilities": ImageArtifact}
    resources = StageResources(threads=1, mem_mb=6000)

    def run(self, inputs: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        return {"probabilities": _restore(inputs["probabilities"], inputs, ctx)}
