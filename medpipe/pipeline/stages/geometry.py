"""``reorient``, ``resample`` and ``crop_foreground``: the recorded, invertible grid changes.

Each appends its record to the image's ``geometry_history`` (see medpipe.transforms), which
``restore_geometry`` replays backwards. ``reorient`` and ``resample`` can take their
settings from a model bundle (``bundle: <folder>``); explicit params win.
"""

from __future__ import annotations

from typing import Any, Literal

from medpipe.errors import PipelineError
from medpipe.pipeline.artifacts import ImageArtifact
from medpipe.pipeline.stage import Stage, StageContext, StageParams, StageResources, register_stage

__all__ = ["Reorient", "Resample", "CropForeground"]


@register_stage
class Reorient(Stage):
    kind = "reorient"
    description = "permute/flip axes to an orientation (e.g. RAS); exact, recorded for restore"

    class Params(StageParams):
        codes: str | None = None  # default: the bundle's orientation, else "RAS"
        bundle: str | None = None

    inputs = {"image": ImageArtifact}
    outputs = {"image": ImageArtifact}
    resources = StageResources(threads=1, mem_mb=3000)

    def run(self, inputs: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        from medpipe.pipeline.stages._bundle import bundle_preprocessing
        from medpipe.transforms import reorient

        codes = self.params.codes
        if codes is None and self.params.bundle:
            codes = bundle_preprocessing(self.params.bundle).orientation
        out, rec = reorient(inputs["image"], codes or "RAS")
        ctx.facts["orientation"] = {"from": rec["from_codes"], "to": rec["codes"]}
        return {"image": out}


@register_stage
class Resample(Stage):
    kind = "resample"
    description = "resample to a spacing in mm (cubic images, one-hot linear labels, nnU-Net anisotropy rule)"

    class Params(StageParams):
        spacing: float | list[float | None] | None = None  # default: the bundle's spacing
        order: Literal[0, 1, 3] | None = None  # images; default 3
        label_mode: Literal["onehot", "nearest"] = "onehot"
        anisotropic: bool = True
        bundle: str | None = None

    inputs = {"image": ImageArtifact}
    outputs = {"image": ImageArtifact}
    resources = StageResources(threads=2, mem_mb=4000)

    def run(self, inputs: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        from medpipe.pipeline.stages._bundle import bundle_preprocessing
        from medpipe.transforms import resample_to_spacing

        spacing = self.params.spacing
        if spacing is None and self.params.bundle:
            spacing = bundle_preprocessing(self.params.bundle).volume_spacing  # 2D bundles: in-plane only
        if spacing is None:
            raise PipelineError(f"stage {ctx.stage!r} (resample) needs params.spacing or params.bundle")
        out, rec = resample_to_spacing(
            inputs["image"],
            spacing,
            order=self.params.order,
            label_mode=self.params.label_mode,
            anisotropic=self.params.anisotropic,
        )
        ctx.facts["resample"] = {"from": rec["from"]["shape"], "to": rec["to"]["shape"], "orders": rec["orders"]}
        return {"image": out}


@register_stage
class CropForeground(Stage):
    kind = "crop_foreground"
    description = "crop to the foreground bounding box (+margin); recorded, undone by restore_geometry"

    class Params(StageParams):
        # "auto": > -500 HU for CT (body vs air), non-zero otherwise; a number: > that value.
        threshold: float | Literal["auto", "nonzero"] = "auto"
        margin: int = 0

    inputs = {"image": ImageArtifact}
    outputs = {"image": ImageArtifact}
    resources = StageResources(threads=1, mem_mb=3000)

    def run(self, inputs: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        from medpipe.transforms import crop_foreground

        img = inputs["image"]
        thr = self.params.threshold
        if thr == "auto":
            thr = -500.0 if img.meta.modality.upper() == "CT" and not img.is_label else None
        elif thr == "nonzero":
            thr = None
        if self.params.margin < 0:
            raise PipelineError(f"stage {ctx.stage!r} (crop_foreground): margin must be >= 0 voxels")
        out, rec = crop_foreground(img, thr, self.params.margin)
        ctx.facts["crop"] = {"bbox": rec["bbox"], "shape": list(out.shape)}
        return {"image": out}
