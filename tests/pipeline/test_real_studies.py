"""Studies as users have them: NIfTI instead of DICOM, anonymised series, real vendor files.

Each case used to fail only at the end (after all the compute) or with a bare exception
from a library. Now every format the study allows is written, one it cannot have is
skipped with a warning (or refuses the study before any stage runs when required), blank
UIDs are recovered from the file meta or generated and recorded, and a library's exception
becomes one sentence naming the stage and the library.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from medpipe.data.dicom_writer import write_dicom_series
from medpipe.data.phantoms import ct_phantom
from medpipe.image import Image
from medpipe.io.volumes import write_volume
from medpipe.pipeline.artifacts import ImageArtifact, LabelArtifact
from medpipe.pipeline.runner import run_pipeline
from medpipe.pipeline.spec import parse_pipeline
from medpipe.pipeline.stage import Stage, StageParams, register_stage

REAL_CT = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "98892001" / "CT5N"


@register_stage
class HighValues(Stage):
    """Test-only segmenter: label 1 where the image is above a threshold (on the input grid)."""

    kind = "t_real_high_values"
    description = "test: label the brightest voxels"

    class Params(StageParams):
        threshold: float = 200.0

    inputs = {"image": ImageArtifact}
    outputs = {"labels": LabelArtifact}

    def run(self, inputs, ctx):
        img = inputs["image"]
        out = img.with_array((img.array > self.params.threshold).astype(np.uint8), is_label=True)
        out.meta.extra["labels"] = {1: "vertebrae"}
        return {"labels": out}


@register_stage
class YamlBreaks(Stage):
    """Test-only stage whose library raises (a YAML parser error deep inside PyYAML)."""

    kind = "t_real_yaml_breaks"
    description = "test: a third-party library raises"
    inputs = {"image": ImageArtifact}
    outputs = {"labels": LabelArtifact}

    def run(self, inputs, ctx):
        import yaml

        yaml.safe_load("key: [unclosed")
        raise AssertionError("unreachable")


def _pipeline(formats: list[str], required: list[str] | None = None, seg: str = "t_real_high_values",
              load: str = "{}", seg_params: str = "{}") -> str:
    req = f", required: {required}" if required else ""
    return f"""
name: real-studies
description: load, threshold, write
stages:
  load: {{kind: load_study, params: {load}, inputs: {{study: input.study}}}}
  seg: {{kind: {seg}, params: {seg_params}, inputs: {{image: load.image}}}}
  write:
    kind: write
    params: {{formats: {formats}{req}, name: seg}}
    inputs: {{labels: seg.labels, source: load.source, reference: load.image}}
outputs: [write.files]
"""


def _run(tmp_path: Path, study: Path, text: str):
    res = run_pipeline(parse_pipeline(text), study, tmp_path / "runs")
    return res, json.loads((res.run_dir / "run.json").read_text())


@pytest.fixture
def ct_series(tmp_path: Path) -> Path:
    ct, _ = ct_phantom((40, 36, 20), (10.0, 10.0, 16.0), seed=3)  # the whole abdomen at coarse voxels
    folder = tmp_path / "ct"
    write_dicom_series(ct, folder, seed=3)
    return folder


def _anonymise(src: Path, dst: Path, *, keep_meta: bool = True) -> Path:
    """Blank what archive anonymisers blank; optionally the file meta's copies too."""
    dst.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        ds = pydicom.dcmread(f)
        for kw in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
                   "PatientName", "PatientID", "StudyDate"):
            if kw in ds:
                setattr(ds, kw, "")
        if not keep_meta:
            ds.file_meta.MediaStorageSOPInstanceUID = ""
        ds.save_as(dst / f.name, enforce_file_format=False)
    return dst


def test_nifti_study_writes_nifti_and_skips_dicom_seg_with_a_warning(tmp_path: Path, ct_series: Path) -> None:
    from medpipe.io.dicom import read_image

    nii = tmp_path / "study.nii.gz"
    write_volume(read_image(ct_series), nii)
    res, record = _run(tmp_path, nii, _pipeline(["nifti", "dicom_seg"]))
    assert res.ok, res.error
    write = record["stages"]["write"]
    assert "not a DICOM series" in write["facts"]["skipped_formats"]["dicom_seg"]
    assert any("DICOM SEG not written" in w for w in res.warnings)
    files = res.run_dir / "artifacts" / "write" / "files.files"
    assert (files / "seg.nii.gz").is_file() and not (files / "seg.dcm").exists()


def test_a_required_dicom_seg_refuses_a_nifti_study_before_any_stage(tmp_path: Path, ct_series: Path) -> None:
    from medpipe.io.dicom import read_image

    nii = tmp_path / "study.nii.gz"
    write_volume(read_image(ct_series), nii)
    res, record = _run(tmp_path, nii, _pipeline(["nifti", "dicom_seg"], ["dicom_seg"]))
    assert not res.ok and res.refused and res.failed_stage == "write"
    assert "must write a DICOM SEG for study 'study'" in res.error and "volume file" in res.error
    assert all(s["status"] == "skipped" for s in record["stages"].values())
    assert sorted(p.name for p in (res.run_dir / "artifacts").iterdir()) == ["input"]  # nothing computed


def test_anonymised_series_gets_its_seg_from_the_file_meta_uids(tmp_path: Path, ct_series: Path) -> None:
    anon = _anonymise(ct_series, tmp_path / "anon")
    meta_uids = {pydicom.dcmread(f).file_meta.MediaStorageSOPInstanceUID for f in anon.iterdir()}
    res, record = _run(tmp_path, anon, _pipeline(["nifti", "dicom_seg"], ["dicom_seg"]))
    assert res.ok, res.error
    facts = record["stages"]["write"]["facts"]["dicom_seg_uids"]
    assert facts["SOPInstanceUID_from_file_meta"] == len(meta_uids) == 20
    assert facts["StudyInstanceUID_generated"] and facts["SeriesInstanceUID_generated"]
    seg = hd.seg.segread(res.run_dir / "artifacts" / "write" / "files.files" / "seg.dcm")
    referenced = {u for _, _, u in seg.get_source_image_uids()}
    assert referenced <= meta_uids and referenced
    assert seg.StudyInstanceUID == facts["StudyInstanceUID_generated"]
    assert any("generated UIDs" in w for w in res.warnings)


def test_series_without_any_sop_uid_still_writes_nifti(tmp_path: Path, ct_series: Path) -> None:
    anon = _anonymise(ct_series, tmp_path / "anon", keep_meta=False)
    res, record = _run(tmp_path, anon, _pipeline(["nifti", "dicom_seg"]))
    assert res.ok, res.error
    assert "no SOP Instance UIDs" in record["stages"]["write"]["facts"]["skipped_formats"]["dicom_seg"]
    # ... and refused up front when the SEG is required.
    res2, _ = _run(tmp_path / "again", anon, _pipeline(["nifti", "dicom_seg"], ["dicom_seg"]))
    assert res2.refused and "no SOP Instance UIDs" in res2.error


def test_a_real_vendor_ct_series_anonymised(tmp_path: Path) -> None:
    """pydicom's test data: a GE CT series (SmartScore, 5 slices), blanked as archives do."""
    assert REAL_CT.is_dir()
    src = tmp_path / "real"
    shutil.copytree(REAL_CT, src)
    anon = _anonymise(src, tmp_path / "real_anon")
    res, record = _run(tmp_path, anon, _pipeline(["nifti", "dicom_seg"], load="{modality: CT, min_slices: 5}",
                                                 seg_params="{threshold: 30}"))  # soft tissue of this scan
    assert res.ok, res.error
    assert "dicom_seg" not in record["stages"]["write"]["facts"].get("skipped_formats", {})
    seg = hd.seg.segread(res.run_dir / "artifacts" / "write" / "files.files" / "seg.dcm")
    assert len({u for _, _, u in seg.get_source_image_uids()}) == 5


def test_a_selector_that_matches_nothing_refuses_before_loading(tmp_path: Path, ct_series: Path) -> None:
    res, _ = _run(tmp_path, ct_series, _pipeline(["nifti"], load="{modality: MR}"))
    assert res.refused and res.failed_stage == "load"
    assert "no series in" in res.error and "matches modality='MR'" in res.error and "found: #" in res.error


def test_a_library_exception_is_one_sentence_naming_the_library(tmp_path: Path, ct_series: Path) -> None:
    res, _ = _run(tmp_path, ct_series, _pipeline(["nifti"], seg="t_real_yaml_breaks"))
    assert not res.ok and res.failed_stage == "seg"
    assert res.error.startswith("unexpected error inside yaml (")
    assert "the traceback is in logs/seg.log" in res.error
    assert "Traceback" in (res.run_dir / "logs" / "seg.log").read_text()
    assert "Traceback" not in res.error


def test_write_params_are_checked_when_the_pipeline_is_read() -> None:
    from medpipe.errors import PipelineError

    with pytest.raises(PipelineError, match="required formats"):
        parse_pipeline(_pipeline(["nifti"], ["dicom_seg"]))


def test_image_segment_writes_labels_on_the_study_grid(tmp_path: Path, ct_series: Path) -> None:
    """The labels an image-level stage returns overlay the series exactly in every format."""
    res, _ = _run(tmp_path, ct_series, _pipeline(["nifti", "nrrd", "dicom_seg"], ["dicom_seg"]))
    assert res.ok, res.error
    from medpipe.io.dicom import read_image
    from medpipe.io.volumes import read_volume

    ct = read_image(ct_series)
    nii = read_volume(res.run_dir / "artifacts" / "write" / "files.files" / "seg.nii.gz", is_label=True)
    assert isinstance(nii, Image) and nii.shape == ct.shape and np.allclose(nii.affine, ct.affine, atol=1e-4)
