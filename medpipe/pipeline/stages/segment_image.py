"""``segment_image``: segment a study's image with a bundle, the label map on the study's grid.

One stage instead of reorient → resample → normalize → segment → restore: the bundle's
``model.yaml`` says how it was trained (medpipe's recipe, or nnU-Net's for imported
models), so a pipeline names the bundle once and cannot preprocess it wrongly. The label
map comes back with exactly the input's shape and affine (``inference.bundle_segment``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from medpipe.errors import BundleError
from medpipe.pipeline.artifacts import ImageArtifact, LabelArtifact
from medpipe.pipeline.stage import Stage, StageContext, StageParams, StageResources, register_stage

__all__ = ["SegmentImage", "InferenceParams", "check_bundle_modality"]


class InferenceParams(StageParams):
    """How to run a bundle (the bundle itself says how to preprocess)."""

    # auto: the bundle's validated int8 model on VNNI/AMX CPUs when it has one, else fp32/bf16 by hardware
    precision: Literal["auto", "bf16", "fp32", "fp16", "int8"] = "auto"
    overlap: float = Field(0.5, ge=0.0, lt=1.0)
    tta: bool | list[int] = False  # True: the bundle's mirror axes (none for NoMirroring models)
    batch_size: int | None = Field(None, ge=1)
    accumulation: Literal["auto", "fp32", "fp16"] = "auto"
    backend: Literal["auto", "torch", "openvino"] = "auto"
    stitch: Literal["auto", "logits", "features"] = "auto"
    memory_budget_gb: float | None = Field(None, gt=0)

    def engine_options(self) -> dict[str, Any]:
        return self.model_dump(include={"precision", "overlap", "tta", "batch_size", "accumulation", "backend",
                                        "stitch", "memory_budget_gb"})


def check_bundle_modality(bundle: Any, modality: str | None, study: str) -> None:
    if modality and bundle.config.modality != modality.upper():
        raise BundleError(f"bundle {bundle.config.name} is for {bundle.config.modality}, study {study!r} is "
                          f"{modality.upper()}")


@register_stage
class SegmentImage(Stage):
    kind = "segment_image"
    description = "segment an image with a bundle, preprocessed as the bundle was trained; labels on the input grid"

    class Params(InferenceParams):
        bundle: str

    @classmethod
    def preflight(cls, params: StageParams, ctx: Any) -> None:
        """The bundle is complete and for the study's modality (before anything is loaded)."""
        from medpipe.models.bundle import load_bundle
        from medpipe.models.model_ref import resolve_model

        bundle = load_bundle(resolve_model(params.bundle))
        check_bundle_modality(bundle, (ctx.learned("image") or {}).get("modality"), ctx.study)

    inputs = {"image": ImageArtifact}
    outputs = {"labels": LabelArtifact}
    resources = StageResources(threads=4, mem_mb=8000, gpu=True)

    def run(self, inputs: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        from medpipe.inference.bundle_segment import segment_image
        from medpipe.models.bundle import load_bundle
        from medpipe.models.model_ref import resolve_model

        p = self.params
        image = inputs["image"]
        modality = (image.meta.modality or "").upper()
        if not modality:
            ctx.warn(f"stage {ctx.stage!r}: the image has no modality; cannot check it against the bundle")
        bundle = load_bundle(resolve_model(p.bundle), expect_modality=modality or None)
        result = segment_image(image, bundle, device=ctx.device, progress=ctx.track, **p.engine_options())
        ctx.facts["segment"] = {"bundle": bundle.config.name, **result.facts}
        return {"labels": result.labels}
