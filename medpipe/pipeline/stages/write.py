"""``write``: export the label map as NIfTI / NRRD / DICOM SEG on the input's exact grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from medpipe.errors import GeometryError, PipelineError
from medpipe.pipeline.artifacts import FilesArtifact, ImageArtifact, LabelArtifact, TableArtifact
from medpipe.pipeline.stage import Stage, StageContext, StageParams, register_stage
from medpipe.pipeline.stages._labels import label_colors, label_names, present_labels

__all__ = ["Write"]

_SUFFIX = {"nifti": ".nii.gz", "nrrd": ".nrrd", "dicom_seg": ".dcm", "png": ".png"}  # png: one-slice label maps


@register_stage
class Write(Stage):
    kind = "write"
    description = "write the label map as NIfTI, NRRD, PNG (2D pictures) and/or DICOM SEG (referencing the source series)"

    class Params(StageParams):
        formats: list[Literal["nifti", "nrrd", "dicom_seg", "png"]] = ["nifti"]
        name: str = "segmentation"  # file stem
        seg_type: Literal["binary", "labelmap"] = "binary"
        series_description: str = "medpipe segmentation"

    inputs = {"labels": LabelArtifact, "source": TableArtifact, "reference": ImageArtifact}
    optional_inputs = frozenset({"source", "reference"})
    outputs = {"files": FilesArtifact}

    def run(self, inputs: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        from medpipe.io.volumes import write_volume

        labels = inputs["labels"]
        p = self.params
        if not p.formats:
            raise PipelineError(f"stage {ctx.stage!r} (write): formats is empty")
        stem = Path(p.name).name
        source = inputs.get("source")
        ref = inputs.get("reference")
        # The geometry guarantee: never write a mask that is not on the input's grid.
        if ref is not None and not (labels.shape == ref.shape and np.allclose(labels.affine, ref.affine, atol=1e-4)):
            raise GeometryError(
                f"stage {ctx.stage!r}: the label map (shape {labels.shape}) is not on the input's grid "
                f"(shape {ref.shape}); add a restore_geometry stage before writing"
            )
        if source is not None and "shape" in source:
            if list(labels.shape) != list(source["shape"]) or not np.allclose(
                labels.affine, np.asarray(source["affine"]), atol=1e-4
            ):
                raise GeometryError(
                    f"stage {ctx.stage!r}: the label map (shape {labels.shape}) is not on the grid of the "
                    f"loaded series (shape {tuple(source['shape'])}); add a restore_geometry stage before writing"
                )
        files: dict[str, Path] = {}
        for fmt in dict.fromkeys(p.formats):
            out = ctx.workdir / f"{stem}{_SUFFIX[fmt]}"
            if fmt in ("nifti", "nrrd", "png"):
                write_volume(labels, out)
            else:
                files[fmt] = self._dicom_seg(labels, source, out, ctx)
                continue
            files[fmt] = out
        return {"files": files}

    def _dicom_seg(self, labels: Any, source: dict[str, Any] | None, out: Path, ctx: StageContext) -> Path:
        from medpipe.io.dicom_seg import write_dicom_seg

        if source is None or source.get("kind") != "dicom":
            raise PipelineError(
                f"stage {ctx.stage!r}: DICOM SEG output needs a DICOM input series; connect "
                "inputs.source to the load_study stage's 'source' output (and read a DICOM study)"
            )
        if source.get("resampled") or not source.get("sop_instance_uids"):
            raise PipelineError(
                f"stage {ctx.stage!r}: the input series {source.get('series_uid', '')} was resampled onto a "
                "regular grid when loading, so a DICOM SEG cannot reference its slices; write NIfTI/NRRD instead"
            )
        values = present_labels(labels)
        names = label_names(labels, values)
        colors = label_colors(labels, values)
        info = {v: (names[v], colors[v]) for v in values}
        mapping = write_dicom_seg(
            labels,
            source["files"],
            info,
            out,
            segmentation_type=self.params.seg_type,
            series_description=self.params.series_description,
        )
        ctx.facts["dicom_seg_segments"] = {names[v]: s for v, s in mapping.items()}
        return out
