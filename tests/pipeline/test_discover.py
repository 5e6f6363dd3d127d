"""The study-discovery rule of ``medpipe run INPUT``, and a run through the built-in load_study."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_volume, write_nifti
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medpipe.errors import InputError
from medpipe.pipeline import discover_studies, list_stages, parse_pipeline, run_pipeline


def _dicom(path: Path, study_uid: str) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.Modality = "CT"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_single_files_and_flat_dicom_folder_are_one_study(tmp_path: Path) -> None:
    nii = write_nifti(tmp_path / "scan.nii.gz", np.zeros((4, 4, 4), np.float32))
    assert discover_studies(nii) == [("scan", nii)]
    flat = tmp_path / "ct_study"
    for i in range(3):
        _dicom(flat / f"IM{i:04d}", "1.2.3")  # no suffix: found by the DICM magic
    assert discover_studies(flat) == [("ct_study", flat)]


def test_series_subfolders_of_one_study_are_one_study(tmp_path: Path) -> None:
    study = tmp_path / "patient_x"
    _dicom(study / "series_1" / "a.dcm", "1.2.3.4")
    _dicom(study / "series_2" / "b.dcm", "1.2.3.4")
    assert discover_studies(study) == [("patient_x", study)]
    # a side folder without DICOM (ground truth, reports) does not turn the study into a batch
    write_nifti(study / "ground_truth" / "labels.nii.gz", np.zeros((4, 4, 4), np.uint8))
    assert discover_studies(study) == [("patient_x", study)]
    # ... but folders of nothing but NIfTI studies are still a batch
    batch = tmp_path / "nifti_batch"
    write_nifti(batch / "case_a" / "ct.nii.gz", np.zeros((4, 4, 4), np.float32))
    write_nifti(batch / "case_b" / "ct.nii.gz", np.zeros((4, 4, 4), np.float32))
    assert [n for n, _ in discover_studies(batch)] == ["case_a", "case_b"]


def test_folder_of_studies_is_a_batch(tmp_path: Path) -> None:
    root = tmp_path / "batch"
    _dicom(root / "dicom_a" / "x.dcm", "1.1")
    _dicom(root / "dicom_b" / "y.dcm", "2.2")
    write_nifti(root / "nifti_c.nii.gz", np.zeros((4, 4, 4), np.float32))
    (root / "zip_d.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    (root / "README.md").write_text("ignored")
    (root / ".hidden").mkdir()
    (root / "empty_folder").mkdir()
    names = [n for n, _ in discover_studies(root)]
    assert names == ["dicom_a", "dicom_b", "nifti_c", "zip_d"]


def test_discovery_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        discover_studies(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no DICOM files, image files or study folders"):
        discover_studies(tmp_path / "empty")
    dup = tmp_path / "dup"
    write_nifti(dup / "case1.nii.gz", np.zeros((4, 4, 4), np.float32))
    write_nifti(dup / "case1" / "img.nii.gz", np.zeros((4, 4, 4), np.float32))
    with pytest.raises(InputError, match="would both be study 'case1'"):
        discover_studies(dup)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="neither a study folder nor an image file"):
        discover_studies(tmp_path / "notes.txt")


def test_builtin_load_study_runs_a_nifti_study(tmp_path: Path) -> None:
    """End to end through the shipped ingestion stage, once it is registered."""
    if "load_study" not in list_stages():
        pytest.skip("the built-in load_study stage is not registered yet")
    from medpipe.pipeline import get_stage
    from medpipe.pipeline.artifacts import ImageArtifact, StudyInputArtifact

    cls = get_stage("load_study")
    port = next(p for p, t in cls.inputs.items() if t.accepts(StudyInputArtifact))
    out = next(o for o, t in cls.outputs.items() if ImageArtifact.accepts(t))
    spec = parse_pipeline({
        "name": "load-and-threshold", "description": "built-in ingestion then a test threshold",
        "stages": {
            "load": {"kind": "load_study", "inputs": {port: "input.study"}},
            "seg": {"kind": "t_threshold_segment", "params": {"threshold": 50},
                    "inputs": {"image": f"load.{out}"}},
        },
    })
    vol = make_volume(4)
    study = write_nifti(tmp_path / "case_b.nii.gz", vol)
    res = run_pipeline(spec, study, tmp_path / "out")
    assert res.ok, res.error
    import nibabel as nib

    labels = nib.load(str(tmp_path / "out/case_b/artifacts/seg/labels.nii.gz"))
    assert int(np.asarray(labels.dataobj).sum()) == int((vol > 50).sum())
