"""``load_study``: the study (DICOM folder/zip or a NIfTI/NRRD/MHA file) -> image + source refs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from medpipe.pipeline.artifacts import ImageArtifact, StudyInputArtifact, TableArtifact
from medpipe.pipeline.stage import Stage, StageContext, StageParams, StageResources, register_stage

__all__ = ["LoadStudy", "source_table"]


def source_table(image: Any, path: Path) -> dict[str, Any]:
    """What a DICOM SEG needs to reference the source series (empty lists for volume files).

    A volume file is never a DICOM source, even when its JSON sidecar (``medpipe convert``)
    still names the series it came from: a SEG must reference files the study holds."""
    from medpipe.io.dicom import is_volume_file

    extra = image.meta.extra
    dicom = not is_volume_file(path) and extra.get("SOPInstanceUIDs") is not None and "series_id" in extra
    return {
        "kind": "dicom" if dicom else "volume",
        "study_path": str(path),
        "study_uid": extra.get("StudyInstanceUID", ""),
        "series_uid": image.meta.series_uid or extra.get("SeriesInstanceUID", ""),
        "frame_of_reference_uid": extra.get("FrameOfReferenceUID", ""),
        "modality": image.meta.modality,
        "description": image.meta.description,
        "sop_instance_uids": list(extra.get("SOPInstanceUIDs", []) or []) if dicom else [],
        "frame_numbers": list(extra.get("FrameNumbers", []) or []) if dicom else [],
        "files": [str(f) for f in image.meta.source_files] if dicom else [str(path)],
        "resampled": bool(extra.get("resampled", False)),
        "shape": list(image.shape),
        "affine": image.affine.tolist(),
    }


@register_stage
class LoadStudy(Stage):
    kind = "load_study"
    description = "read the study (DICOM folder/zip or NIfTI/NRRD/MHA) into an image + its DICOM references"

    class Params(StageParams):
        # SeriesSelector fields (all that are set must hold), for DICOM studies.
        modality: str | None = None
        description: str | None = None
        orientation: Literal["axial", "sagittal", "coronal", "oblique"] | None = None
        min_slices: int | None = None
        series_number: int | None = None
        uid: str | None = None
        largest: bool = False
        first: bool = False
        resample_irregular: bool = False

    inputs = {"study": StudyInputArtifact}
    outputs = {"image": ImageArtifact, "source": TableArtifact}
    resources = StageResources(threads=1, mem_mb=4000)

    @staticmethod
    def _selector(params: StageParams) -> Any:
        from medpipe.io.dicom import SeriesSelector

        fields = params.model_dump(exclude={"resample_irregular"})
        chosen = {k: v for k, v in fields.items() if v not in (None, False)}
        return SeriesSelector(**chosen) if chosen else None

    @classmethod
    def preflight(cls, params: StageParams, ctx: Any) -> dict[str, Any]:
        """From the headers: the study is readable and the selector picks one loadable series."""
        from medpipe.io.dicom import choose_series

        if ctx.probe.kind == "volume":
            return {"kind": "volume", "modality": None}
        info = choose_series(ctx.probe.scan, cls._selector(params), resample_irregular=params.resample_irregular)
        return {"kind": "dicom", "series": info.label(), "resampled": bool(info.problems), "modality": info.modality,
                "sop_instance_uids": sum(1 for f in info.frames if f.sop_instance_uid)}

    def run(self, inputs: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        from medpipe.io.dicom import read_image

        path = Path(inputs["study"])
        image = read_image(path, self._selector(self.params), resample_irregular=self.params.resample_irregular)
        for w in image.meta.extra.get("warnings", []) or []:
            ctx.warn(str(w))
        ctx.facts["input"] = {
            "shape": list(image.shape),
            "spacing": [round(s, 4) for s in image.spacing],
            "orientation": image.orientation,
            "modality": image.meta.modality,
        }
        return {"image": image, "source": source_table(image, path)}
