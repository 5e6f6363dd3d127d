"""The MRI job (k-space -> CIRIM -> segmentation -> atlas -> report) on 4 k-space studies, one of
them truncated, under medpipe run, Snakemake, Airflow and the HTTP server: the three good studies
publish byte-identical artifacts everywhere (DICOM compared without minted UIDs), the broken one
fails alone at its load stage with one sentence naming the file, and the DICOM SEG references the
published MR series of the reconstruction on its exact grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from workflow_helpers import engine_tool

from benchmarks.engines import run_engines

# small, so four engines fit CI: 64x64 at 3 mm, 24 slices of 5 mm (the bundles resample)
GRID = {"matrix": 64, "pixel_mm": 3.0, "slices": 24, "slice_mm": 5.0}


@pytest.mark.slow
def test_mri_brain_gives_identical_artifacts_under_every_engine(tmp_path: Path) -> None:
    import pydicom

    from medpipe.data.mri_brain_studies import write_mri_brain_studies
    from medpipe.io.volumes import read_volume

    engine_tool("snakemake"), engine_tool("airflow")
    write_mri_brain_studies(tmp_path / "studies", 4, broken=1, progress=False, **GRID)
    res = run_engines("mri_brain", tmp_path / "studies", tmp_path, server=True, allow_failures=True)
    assert res["studies"] == ["mri_0", "mri_1", "mri_2"]
    for engine, (files, differ) in res["compare"].items():
        assert files >= 3 * 60 and differ == [], engine  # every stage's files, the three good studies

    # the broken study: one sentence naming the file, under every engine, and nothing else failed
    rec = json.loads((res["outs"]["medpipe run"] / "mri_3" / "run.json").read_text())
    assert rec["status"] == "failed" and rec["error"]["stage"] == "load"
    assert "mri_3.h5 is an HDF5 file that cannot be read: it is truncated or damaged" in rec["error"]["message"]
    assert {s["status"] for name, s in rec["stages"].items() if name != "load"} == {"skipped"}
    states = res["airflow"]["states"]
    assert states["study.load"]["3"] == "failed" and states["study.report"]["3"] == "upstream_failed"
    assert {states["study.report"][str(i)] for i in range(3)} == {"success"}
    assert not (res["outs"]["Snakemake"] / "mri_3" / "artifacts" / "cirim").exists()
    refused = res["server_jobs"]["mri_3"]
    assert "refused" in refused and "truncated or damaged" in refused["refused"]
    assert {res["server_jobs"][f"mri_{i}"]["state"] for i in range(3)} == {"done"}

    # geometry carries through: the SEG references the published MR series, frames on its slices
    run = res["outs"]["Airflow"] / "mri_1" / "artifacts"
    series = sorted((run / "write_mr" / "files.files" / "cirim_dicom").glob("*.dcm"))
    seg = pydicom.dcmread(run / "write_seg" / "files.files" / "tissue_lesion.dcm")
    mr = [pydicom.dcmread(f, stop_before_pixels=True) for f in series]
    assert len(mr) == GRID["slices"] and seg.Modality == "SEG"
    referenced = {r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {d.SOPInstanceUID for d in mr}
    assert seg.FrameOfReferenceUID == mr[0].FrameOfReferenceUID and seg.StudyInstanceUID == mr[0].StudyInstanceUID
    labels = read_volume(run / "write_seg" / "files.files" / "tissue_lesion.nii.gz", is_label=True)
    recon = read_volume(run / "cirim" / "image.nii.gz")
    assert labels.shape == recon.shape and np.allclose(labels.affine, recon.affine, atol=1e-5)
    assert sorted(p.name for p in (run / "report" / "files.files").iterdir()) == ["manifest.json", "report.pdf",
                                                                                  "report.png"]
