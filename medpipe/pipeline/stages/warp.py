"""``warp`` / ``warp_labels``: apply a displacement field to an image or a label map.

The output is on the field's (fixed) grid; the input may be on any grid, it is sampled
through its own affine. Images are trilinear; label maps one-hot linear (largest wins) or
nearest. Two kinds because the runner types every port: labels stay labels.
"""

from __future__ import annotations

from typing import Any, Literal

from medpipe.pipeline.artifacts import FieldArtifact, ImageArtifact, LabelArtifact
from medpipe.pipeline.stage import Stage, StageContext, StageParams, StageResources, register_stage

__all__ = ["Warp", "WarpLabels"]


@register_stage
class Warp(Stage):
    kind = "warp"
    description = "resample an image through a displacement field onto the field's (fixed) grid (trilinear)"

    class Params(StageParams):
        fill: float | None = None  # outside the image: default its minimum

    inputs = {"image": ImageArtifact, "field": FieldArtifact}
    outputs = {"image": ImageArtifact}
    resources = StageResources(threads=2, mem_mb=4000)

    def run(self, inputs: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        from medpipe.registration.field import warp_image

        return {"image": warp_image(inputs["image"], inputs["field"], fill=self.params.fill)}


@register_stage
class WarpLabels(Stage):
    kind = "warp_labels"
    description = "resample a label map through a displacement field onto the field's grid (one-hot or nearest)"

    class Params(StageParams):
        label_mode: Literal["onehot", "nearest"] = "onehot"

    inputs = {"labels": LabelArtifact, "field": FieldArtifact}
    outputs = {"labels": LabelArtifact}
    resources = StageResources(threads=2, mem_mb=4000)

    def run(self, inputs: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        from medpipe.registration.field import warp_image

        return {"labels": warp_image(inputs["labels"], inputs["field"], label_mode=self.params.label_mode)}
