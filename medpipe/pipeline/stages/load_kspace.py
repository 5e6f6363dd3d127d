"""``load_kspace``: a k-space file (fastMRI, ISMRMRD or medpipe HDF5) -> ``KSpace``.

Fully sampled data can be undersampled here (retrospectively, the way fastMRI evaluates:
``undersample: {mask: equispaced, acceleration: 4}``); their root-sum-of-squares becomes the
reference the report compares against. Already undersampled data keep their own mask, and
``expect_acceleration`` refuses a file whose mask does not match the acceleration the pipeline
(or its bundle) was built for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from medpipe.errors import InputError
from medpipe.pipeline.artifacts import KSpaceArtifact, StudyInputArtifact
from medpipe.pipeline.stage import Stage, StageContext, StageParams, register_stage

__all__ = ["LoadKSpace"]


class Undersample(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mask: Literal["equispaced", "random", "gaussian2d", "poisson"] = "equispaced"
    acceleration: float = Field(4.0, ge=1.0)
    center_fraction: float | None = Field(None, gt=0, lt=1)
    seed: int = 0


@register_stage
class LoadKSpace(Stage):
    kind = "load_kspace"
    description = "read multi-coil k-space (fastMRI / ISMRMRD / medpipe HDF5), optionally undersample it"

    class Params(StageParams):
        undersample: Undersample | None = None
        expect_acceleration: float | None = Field(None, ge=1.0)
        tolerance: float = Field(0.15, ge=0.0)  # relative: a 4x protocol may measure 3.5-4.6x

    inputs = {"study": StudyInputArtifact}
    outputs = {"kspace": KSpaceArtifact}

    def run(self, inputs: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        from medpipe.io.kspace import read_kspace
        from medpipe.recon.masks import make_mask

        path = Path(inputs["study"])
        ks = read_kspace(path)  # the path stays out of the k-space's metadata: the same data under
        # another name or folder (a server's upload) must give the same artifacts
        p = self.params
        if p.undersample is not None:
            u = p.undersample
            if ks.is_undersampled:
                raise InputError(f"{path} is already undersampled ({ks.acceleration:.2f}x); remove the stage's "
                                 "undersample setting to reconstruct it as acquired")
            mask = make_mask(u.mask, ks.matrix, u.acceleration, u.center_fraction, u.seed)
            ks = ks.undersample(mask, {"mask_kind": u.mask, "nominal_acceleration": u.acceleration,
                                       "mask_seed": u.seed})
        if p.expect_acceleration is not None:
            measured = ks.acceleration
            if abs(measured - p.expect_acceleration) > p.tolerance * p.expect_acceleration:
                raise InputError(f"{path} is sampled at {measured:.2f}x but the pipeline expects "
                                 f"{p.expect_acceleration:g}x; check the protocol or set expect_acceleration")
        for w in ks.meta.get("warnings", []) or []:
            ctx.warn(str(w))
        ctx.facts["kspace"] = {"coils": ks.n_coils, "slices": ks.n_slices, "matrix": list(ks.matrix),
                               "image_shape": list(ks.image_shape), "acceleration": round(ks.acceleration, 3),
                               "format": ks.meta.get("format", "")}
        return {"kspace": ks}
