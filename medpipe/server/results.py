"""A finished job's result files: which formats it can give, and the ``.seg.nrrd`` for Slicer.

The label map comes from the pipeline's ``write`` stages (the run's ``run.json`` says which
stages are of that kind), so any pipeline that writes a NIfTI/NRRD label map can serve all
three formats: the NIfTI as written, the DICOM SEG if the pipeline wrote one (it needs a
DICOM study), and a ``.seg.nrrd`` (segment names and colours from the label map's metadata)
made on first request and kept next to the run. A pipeline whose input is not an image the
client holds (raw k-space) also publishes the image the labels lie on (a ``write_image``
stage's NIfTI: the reconstruction): format ``image``, so a viewer can show both.
"""

from __future__ import annotations

import json
from pathlib import Path

from medpipe.pipeline.runner import output_files_of

__all__ = ["RESULT_FORMATS", "available_formats", "result_file"]

RESULT_FORMATS = ("seg.nrrd", "nifti", "dicom_seg", "image")


def _written_files(run_dir: Path) -> dict[str, list[Path]]:
    """Files of the run's result outputs, by the kind of stage that produced them (one read of run.json)."""
    try:
        record = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    kinds = {name: p.get("kind") for name, p in (record.get("params") or {}).items()}
    files: dict[str, list[Path]] = {}
    for ref, paths in (record.get("outputs") or {}).items():
        files.setdefault(kinds.get(ref.split(".", 1)[0]) or "", []).extend(output_files_of(run_dir, paths))
    return files


def _by_format(run_dir: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    written = _written_files(run_dir)
    for f in written.get("write", []):
        name = f.name.lower()
        if name.endswith(".seg.nrrd"):
            found.setdefault("seg.nrrd", f)
        elif name.endswith((".nii.gz", ".nii")):
            found.setdefault("nifti", f)
        elif name.endswith(".nrrd"):
            found.setdefault("nrrd", f)
        elif name.endswith(".dcm"):
            found.setdefault("dicom_seg", f)
    image = next((f for f in written.get("write_image", []) if f.name.lower().endswith((".nii.gz", ".nii"))), None)
    if image is not None:
        found["image"] = image
    return found


def available_formats(run_dir: Path) -> list[str]:
    found = _by_format(run_dir)
    out = []
    if "seg.nrrd" in found or "nifti" in found or "nrrd" in found:
        out.append("seg.nrrd")
    out.extend(f for f in ("nifti", "dicom_seg", "image") if f in found)
    return out


def result_file(run_dir: Path, fmt: str, cache_dir: Path) -> Path | None:
    """The file for ``fmt`` (None when this run cannot give it); a ``.seg.nrrd`` is made once."""
    found = _by_format(run_dir)
    if fmt != "seg.nrrd":
        return found.get(fmt)
    if "seg.nrrd" in found:
        return found["seg.nrrd"]
    source = found.get("nifti") or found.get("nrrd")
    if source is None:
        return None
    stem = source.name.split(".")[0] or "segmentation"
    target = cache_dir / f"{stem}.seg.nrrd"
    if target.is_file() and target.stat().st_mtime >= source.stat().st_mtime:
        return target
    from medpipe.io.volumes import read_volume
    from medpipe.pipeline.stages.write import write_labels_seg_nrrd

    return write_labels_seg_nrrd(read_volume(source, is_label=True), target)
