"""``load_image``: a second image named by a parameter (a baseline scan, a reference), not the study.

Longitudinal pipelines compare the study with an image from another date; that image is
given as ``path`` (``--set baseline.path=/data/baseline.nii.gz`` or a DICOM folder/zip), is
read exactly like the study, and is part of the stage's cache key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medpipe.errors import InputError
from medpipe.pipeline.artifacts import ImageArtifact, TableArtifact
from medpipe.pipeline.stage import Stage, StageContext, StageParams, StageResources, register_stage

__all__ = ["LoadImage"]


@register_stage
class LoadImage(Stage):
    kind = "load_image"
    description = "read an image given by path (NIfTI/NRRD/MHA or a DICOM folder/zip) - a baseline, a reference"

    class Params(StageParams):
        path: str = ""
        modality: str | None = None  # DICOM series selector
        largest: bool = True

    inputs: dict = {}
    outputs = {"image": ImageArtifact, "source": TableArtifact}
    resources = StageResources(threads=1, mem_mb=3000)

    @classmethod
    def external_inputs(cls, params: StageParams) -> list[Path]:
        p = Path(params.path).expanduser() if params.path else None
        return [p] if p is not None and p.exists() else []

    def run(self, inputs: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        from medpipe.io.dicom import SeriesSelector, read_image
        from medpipe.pipeline.stages.load_study import source_table

        p = self.params
        if not p.path:
            raise InputError(f"stage {ctx.stage!r} needs the image's path: --set {ctx.stage}.path=FILE_OR_FOLDER")
        path = Path(p.path).expanduser()
        if not path.exists():
            raise InputError(f"stage {ctx.stage!r}: {path} does not exist")
        chosen = {k: v for k, v in {"modality": p.modality, "largest": p.largest}.items() if v not in (None, False)}
        image = read_image(path, SeriesSelector(**chosen) if path.is_dir() or path.suffix == ".zip" else None)
        ctx.facts["input"] = {"path": str(path), "shape": list(image.shape), "modality": image.meta.modality}
        return {"image": image, "source": source_table(image, path)}
