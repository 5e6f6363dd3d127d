"""``register``: fixed + moving images -> the displacement field (file form) + the warped moving image.

The field is the total transform (affine pre-alignment, then the deformable part) on the
fixed image's grid, in world millimetres; ``warp`` / ``warp_labels`` apply it to anything
else drawn on the moving image (labels, other contrasts), in another process if need be.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from medpipe.pipeline.artifacts import FieldArtifact, ImageArtifact
from medpipe.pipeline.stage import Stage, StageContext, StageParams, StageResources, register_stage

__all__ = ["Register", "RegisterParams", "registration_bundle_inputs"]


class RegisterParams(StageParams):
    method: Literal["micdir", "voxelmorph", "demons", "bspline", "affine"] = "micdir"
    bundle: str | None = None  # a registration bundle (micdir default: the shipped brain_micdir)
    affine: bool = True  # SimpleITK affine pre-alignment (Mattes MI) first
    refine_iterations: int | None = Field(None, ge=0)  # instance optimisation; default: the bundle's
    min_overlap: float = Field(0.3, ge=0.0, le=1.0)
    engine: Literal["auto", "torch", "openvino"] = "auto"  # what runs a learned method's network
    precision: Literal["fp32", "bf16"] = "fp32"  # OpenVINO's inference precision


def registration_bundle_inputs(params: Any) -> list[Path]:
    """The bundle folder a learned method reads (the default one when none is named)."""
    from medpipe.models.bundle import resolve_bundle_path
    from medpipe.registration.register import DEFAULT_BUNDLE

    name = params.bundle or (DEFAULT_BUNDLE.get(params.method) if params.method in ("micdir", "voxelmorph") else None)
    if not name:
        return []
    path = resolve_bundle_path(str(name))
    return [path] if path.exists() else []


@register_stage
class Register(Stage):
    kind = "register"
    description = "register moving onto fixed (micdir, voxelmorph, demons, bspline, affine) -> field + warped image"
    Params = RegisterParams
    inputs = {"fixed": ImageArtifact, "moving": ImageArtifact}
    outputs = {"field": FieldArtifact, "image": ImageArtifact}
    resources = StageResources(threads=4, mem_mb=6000, gpu=True)

    @classmethod
    def external_inputs(cls, params: StageParams) -> list[Path]:
        return registration_bundle_inputs(params)

    def run(self, inputs: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        from medpipe.registration.register import register

        p = self.params
        res = register(inputs["fixed"], inputs["moving"], p.method, bundle=p.bundle, affine=p.affine,
                       refine_iterations=p.refine_iterations, device=ctx.device, min_overlap=p.min_overlap,
                       engine=p.engine, precision=p.precision)
        ctx.facts["register"] = {**res.facts, "seconds": res.seconds}
        return {"field": res.field, "image": res.warped}
