"""``write_image``: export an image (a reconstruction, a processed volume) as NIfTI and/or a
DICOM series (MR/CT; one file per slice, geometry from the image's affine).

The series' UIDs derive from the study's name and the image's content, so every study gets
its own Study/Series/SOP Instance UIDs and re-running (or another engine running) the same
study writes the same series — which a DICOM SEG of it (``write`` with ``series:``) can
reference."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medpipe.errors import PipelineError
from medpipe.pipeline.artifacts import FilesArtifact, ImageArtifact
from medpipe.pipeline.stage import Stage, StageContext, StageParams, register_stage

__all__ = ["WriteImage"]


@register_stage
class WriteImage(Stage):
    kind = "write_image"
    description = "write an image as NIfTI and/or a DICOM series (e.g. a reconstructed MR series)"

    class Params(StageParams):
        formats: list[Literal["nifti", "dicom"]] = ["nifti"]
        name: str = "image"
        series_description: str = "medpipe image"
        series_number: int = 900
        patient_id: str = "MEDPIPE"

    inputs = {"image": ImageArtifact}
    outputs = {"files": FilesArtifact}

    def run(self, inputs: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        from medpipe.data.dicom_writer import write_dicom_series
        from medpipe.io.volumes import write_volume

        p = self.params
        if not p.formats:
            raise PipelineError(f"stage {ctx.stage!r} (write_image): formats is empty")
        image = inputs["image"]
        stem = Path(p.name).name
        files: dict[str, Path] = {}
        if "nifti" in p.formats:
            files["nifti"] = write_volume(image, ctx.workdir / f"{stem}.nii.gz")
        if "dicom" in p.formats:
            folder = ctx.workdir / f"{stem}_dicom"
            one = image if image.n_channels == 1 else image.with_array(image.array[:1])
            from pydicom.uid import generate_uid

            digest = hashlib.sha256(np.ascontiguousarray(one.array).tobytes()).hexdigest()
            ident = [str(ctx.study), p.patient_id, digest]
            study_uid = str(generate_uid(entropy_srcs=["study", *ident]))
            write_dicom_series(one, folder, modality=image.meta.modality or "MR", seed=int(digest[:5], 16),
                               study_uid=study_uid, frame_of_reference_uid=str(generate_uid(entropy_srcs=["for", *ident])),
                               series_description=p.series_description, series_number=p.series_number,
                               patient_id=p.patient_id, patient_name=f"{p.patient_id}^{ctx.study or 'study'}")
            files["dicom"] = folder
        return {"files": files}
