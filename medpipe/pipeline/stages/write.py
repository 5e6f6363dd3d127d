"""``write``: export the label map as NIfTI / NRRD / DICOM SEG on the input's exact grid.

The DICOM SEG references either the loaded series (``source``: the load stage's table) or a
series an earlier stage wrote (``series``: a ``write_image`` stage's files, e.g. the MR series
of a reconstruction), read back here so the SEG points at exactly the files published."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import model_validator

from medpipe.errors import DicomError, GeometryError, PipelineError
from medpipe.pipeline.artifacts import FilesArtifact, ImageArtifact, LabelArtifact, TableArtifact
from medpipe.pipeline.stage import Stage, StageContext, StageParams, StageResources, register_stage
from medpipe.pipeline.stages._labels import label_colors, label_names, present_labels, structure_values

__all__ = ["Write", "dicom_seg_unavailable", "write_labels_seg_nrrd"]

_SUFFIX = {"nifti": ".nii.gz", "nrrd": ".nrrd", "dicom_seg": ".dcm", "png": ".png",  # png: one-slice label maps
           "seg_nrrd": ".seg.nrrd"}
_FORMAT = Literal["nifti", "nrrd", "dicom_seg", "png", "seg_nrrd"]


def dicom_seg_unavailable(source: dict[str, Any] | None, learned: dict[str, Any] | None = None) -> str | None:
    """Why this study cannot have a DICOM SEG (one clause), or None when it can.

    ``source`` is the load stage's output; before it exists (preflight) ``learned`` is what
    the load stage's preflight found in the headers."""
    info = source if source is not None else learned
    if info is None:
        return "the write stage has no 'source' input (connect it to the load_study stage's 'source' output)"
    if info.get("kind") != "dicom":
        return "the study is a volume file (NIfTI/NRRD/MHA), not a DICOM series a SEG could reference"
    if info.get("resampled"):
        return "its series was resampled onto a regular grid when loading, so SEG frames cannot match its slices"
    n_uids = info.get("sop_instance_uids")
    if isinstance(n_uids, list):
        n_uids = sum(1 for u in n_uids if u)
    if not n_uids:
        return "its series has no SOP Instance UIDs (blank in the datasets and the file meta)"
    return None


def write_labels_seg_nrrd(labels: Any, out: Path) -> Path:
    """A Slicer ``.seg.nrrd``: every named structure is a segment (absent ones empty), in label order."""
    from medpipe.io.slicer_seg import write_seg_nrrd

    values = structure_values(labels)
    return write_seg_nrrd(labels, out, label_names(labels, values), label_colors(labels, values))


@register_stage
class Write(Stage):
    kind = "write"
    description = "write the label map as NIfTI, NRRD, PNG (2D pictures) and/or DICOM SEG (referencing the source series)"

    class Params(StageParams):
        # Every format the study allows is written; one it cannot have (DICOM SEG of a NIfTI
        # input) is skipped with a warning, unless it is listed in `required`: then the study
        # is refused before any stage runs.
        # seg_nrrd: 3D Slicer's segmentation file (segment names and colours; opens as a segmentation)
        formats: list[_FORMAT] = ["nifti"]
        required: list[_FORMAT] = []
        name: str = "segmentation"  # file stem
        seg_type: Literal["binary", "labelmap"] = "binary"
        series_description: str = "medpipe segmentation"
        # NIfTI/NRRD as one binary mask per structure, <name>/<structure>.nii.gz (TotalSegmentator's layout)
        split: bool = False

        @model_validator(mode="after")
        def _required_are_formats(self) -> Write.Params:
            missing = [f for f in self.required if f not in self.formats]
            if missing:
                raise ValueError(f"required formats {missing} are not in formats {self.formats}")
            return self

    inputs = {"labels": LabelArtifact, "source": TableArtifact, "reference": ImageArtifact, "series": FilesArtifact}
    optional_inputs = frozenset({"source", "reference", "series"})
    outputs = {"files": FilesArtifact}
    resources = StageResources(threads=1, mem_mb=3000)

    @classmethod
    def preflight(cls, params: StageParams, ctx: Any) -> None:
        if "dicom_seg" in params.required and "series" not in ctx.inputs:
            why = dicom_seg_unavailable(None, ctx.learned("source") or ({} if "source" in ctx.inputs else None))
            if why:
                raise PipelineError(f"stage {ctx.stage!r} (write) must write a DICOM SEG for study {ctx.study!r}, "
                                    f"but {why}")

    def run(self, inputs: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        from medpipe.io.volumes import write_volume

        labels = inputs["labels"]
        p = self.params
        if not p.formats:
            raise PipelineError(f"stage {ctx.stage!r} (write): formats is empty")
        stem = Path(p.name).name
        source = inputs.get("source")
        if inputs.get("series") is not None:
            if source is not None:
                raise PipelineError(f"stage {ctx.stage!r} (write): connect 'source' or 'series', not both")
            source = self._written_series(inputs["series"], ctx)
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
        skipped: dict[str, str] = {}
        for fmt in dict.fromkeys(p.formats):
            out = ctx.workdir / f"{stem}{_SUFFIX[fmt]}"
            if fmt in ("nifti", "nrrd", "png"):
                files[fmt] = self._split(labels, ctx.workdir / stem, _SUFFIX[fmt]) if p.split else out
                if not p.split:
                    write_volume(labels, out)
                continue
            if fmt == "seg_nrrd":
                files[fmt] = write_labels_seg_nrrd(labels, out)
                continue
            why = dicom_seg_unavailable(source)
            if why is None:
                try:
                    files[fmt] = self._dicom_seg(labels, source, out, ctx)
                    continue
                except DicomError as exc:
                    if fmt in p.required:
                        raise
                    why = str(exc)
            if fmt in p.required:
                raise PipelineError(f"stage {ctx.stage!r}: a DICOM SEG is required but {why}")
            skipped[fmt] = why
            ctx.warn(f"DICOM SEG not written: {why}")
        if not files:
            raise PipelineError(f"stage {ctx.stage!r}: none of the formats {p.formats} could be written "
                                f"({'; '.join(skipped.values())})")
        if skipped:
            ctx.facts["skipped_formats"] = skipped
        return {"files": files}

    @staticmethod
    def _written_series(files: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        """The source table of a DICOM series another stage wrote (its ``dicom`` folder)."""
        from medpipe.io.dicom import read_image
        from medpipe.pipeline.stages.load_study import source_table

        folder = files.get("dicom")
        if folder is None:
            raise PipelineError(f"stage {ctx.stage!r} (write): the 'series' input has no 'dicom' files (roles: "
                                f"{', '.join(files) or 'none'}); write the image with formats [dicom]")
        image = read_image(Path(folder))
        return source_table(image, Path(folder))

    @staticmethod
    def _split(labels: Any, folder: Path, suffix: str) -> Path:
        """One uint8 mask per named structure (absent ones too, all zeros: a fixed file set)."""
        import re

        from medpipe.io.volumes import write_volume

        names = label_names(labels, sorted(int(k) for k in (labels.meta.extra.get("labels") or {}) if int(k) != 0)
                            or present_labels(labels))
        folder.mkdir(parents=True, exist_ok=True)
        arr = labels.array[0]
        for value, name in names.items():
            safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or f"label_{value}"
            mask = labels.with_array((arr == value)[None].astype(np.uint8), is_label=True)
            mask.meta.extra["labels"] = {1: name}
            write_volume(mask, folder / f"{safe}{suffix}")
        return folder

    def _dicom_seg(self, labels: Any, source: dict[str, Any], out: Path, ctx: StageContext) -> Path:
        from medpipe.io.dicom_seg import write_dicom_seg

        values = present_labels(labels)
        names = label_names(labels, values)
        colors = label_colors(labels, values)
        info = {v: (names[v], colors[v]) for v in values}
        repairs: dict[str, Any] = {}
        mapping = write_dicom_seg(
            labels,
            source["files"],
            info,
            out,
            segmentation_type=self.params.seg_type,
            series_description=self.params.series_description,
            facts=repairs,
        )
        ctx.facts["dicom_seg_segments"] = {names[v]: s for v, s in mapping.items()}
        if repairs:
            ctx.facts["dicom_seg_uids"] = repairs
            generated = [k.removesuffix("_generated") for k in repairs if k.endswith("_generated")]
            if generated:
                ctx.warn(f"the source series has blank {', '.join(generated)}; the DICOM SEG references "
                         "generated UIDs (recorded in run.json)")
        return out
