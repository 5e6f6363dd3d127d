"""Jobs through a real ``medpipe serve``, driven by the Slicer module's own client library."""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import phantom_volume
from server_test_stages import COLORS, ORGANS
from services import MedpipeServer, write_test_pipelines

from medpipe.image import Image
from medpipe.io.volumes import write_volume


def _expected_labels() -> np.ndarray:
    a, _ = phantom_volume()
    return ((a >= 100) & (a < 200)).astype(np.uint8) + 2 * (a >= 200).astype(np.uint8)


def _wait_for(predicate, timeout: float = 90.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_info_lists_pipelines_models_and_limits(client) -> None:
    info = client.info()
    assert info["name"] == "medpipe" and info["version"]
    fast = next(p for p in info["pipelines"] if p["name"] == "t_fast")
    assert fast["stages"] == ["load", "seg", "write"]
    assert "ct_organs_phantom" in {m["name"] for m in info["models"]}
    assert info["workers"] == 2 and info["max_upload_bytes"] == 2**20
    assert info["result_formats"] == ["seg.nrrd", "nifti", "dicom_seg", "image"]


def test_volume_job_gives_a_named_coloured_segmentation(client, tmp_path: Path) -> None:
    """NRRD in (what the Slicer module sends), .seg.nrrd out, read back with slicerio."""
    import slicerio

    a, affine = phantom_volume()
    nrrd = write_volume(Image(a[None], affine), tmp_path / "ct.nrrd")
    seen: list[dict] = []
    job = client.submit("t_fast", nrrd)
    assert job["state"] == "queued" and job["input"] == {
        "source": "upload", "name": "ct.nrrd", "file": "input.nrrd", "bytes": nrrd.stat().st_size,
        "study": "ct", "kind": "volume", "shape": [32, 32, 24]}
    done = client.wait(job["id"], poll_s=0.3, timeout=120, on_progress=seen.append)
    assert done["state"] == "done", done
    assert {s["status"] for s in done["stages"].values()} == {"done"} and done["progress"] == 1.0
    assert done["results"] == ["seg.nrrd", "nifti"]
    assert any("DICOM SEG not written" in w for w in done["warnings"])  # a volume has no series to reference
    assert any(j["state"] == "running" for j in seen)

    seg_path = client.download(job["id"], tmp_path / "result.seg.nrrd")
    seg = slicerio.read_segmentation(str(seg_path))
    by_name = {s["name"]: s for s in seg["segments"]}
    assert set(by_name) == set(ORGANS.values())
    for value, name in ORGANS.items():
        assert by_name[name]["labelValue"] == value
        assert np.allclose(np.array(by_name[name]["color"]) * 255, COLORS[value], atol=0.6)
    assert np.array_equal(seg["voxels"], _expected_labels())
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    assert np.allclose(seg["ijkToLPS"], lps, atol=1e-5)

    nifti = client.download(job["id"], tmp_path / "organs.nii.gz", fmt="nifti")
    import nibabel as nib

    img = nib.load(str(nifti))
    assert np.allclose(img.affine, affine, atol=1e-5) and np.array_equal(np.asarray(img.dataobj), _expected_labels())

    from medpipe_slicer import ServerError

    with pytest.raises(ServerError, match="has no dicom_seg result \\(it has: seg.nrrd, nifti\\)"):
        client.download(job["id"], tmp_path / "x.dcm", fmt="dicom_seg")
    assert not (tmp_path / "x.dcm").exists() and not list(tmp_path.glob(".x.dcm*"))


def test_zipped_dicom_job_gives_a_dicom_seg_referencing_the_series(client, tmp_path: Path) -> None:
    import pydicom

    from medpipe.data.dicom_writer import write_dicom_series

    a, affine = phantom_volume()
    series = tmp_path / "series"
    write_dicom_series(Image(a[None], affine), series, modality="CT", series_description="test CT")
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(series.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(series).as_posix())
    uid = pydicom.dcmread(next(p for p in series.rglob("*") if p.is_file()), stop_before_pixels=True).SeriesInstanceUID

    job = client.wait(client.submit("t_fast", archive)["id"], poll_s=0.3, timeout=120)
    assert job["state"] == "done", job
    assert job["results"] == ["seg.nrrd", "nifti", "dicom_seg"] and job["input"]["kind"] == "dicom"
    seg = pydicom.dcmread(client.download(job["id"], tmp_path / "seg.dcm", fmt="dicom_seg"))
    assert seg.Modality == "SEG"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "spleen"]


def test_crashed_job_is_one_failed_job_and_the_server_goes_on(client, server, nifti_study: Path, tmp_path: Path) -> None:
    job = client.wait(client.submit("t_crash", nifti_study)["id"], poll_s=0.3, timeout=120)
    assert job["state"] == "failed"
    assert job["failed_stage"] == "seg" and job["error"] == "worker process died with exit code 7"
    assert job["stages"]["seg"]["status"] == "failed" and job["stages"]["write"]["status"] == "skipped"
    assert server.proc.poll() is None and client.health()
    run = json.loads((server.state / "jobs" / job["id"] / "run" / job["study"] / "run.json").read_text())
    assert run["status"] == "failed" and run["error"]["message"] == "worker process died with exit code 7"
    from medpipe_slicer import ServerError

    with pytest.raises(ServerError, match="is failed: worker process died with exit code 7; results exist once"):
        client.download(job["id"], tmp_path / "out" / "x.seg.nrrd")
    assert not (tmp_path / "out").exists()


def test_cancel_a_running_job_then_delete_it(client, server, nifti_study: Path) -> None:
    job = client.submit("t_slow", nifti_study)
    _wait_for(lambda: client.job(job["id"])["stages"]["seg"].get("progress"), what="the slow stage to report progress")
    running = client.job(job["id"])
    assert running["state"] == "running" and running["stages"]["seg"]["status"] == "running"
    assert running["stages"]["seg"]["progress"]["total"] == 24
    assert client.cancel(job["id"])["cancel_requested"] is True
    final = client.wait(job["id"], poll_s=0.3, timeout=60)
    assert final["state"] == "cancelled" and final["error"] == "cancelled by the client"
    assert final["results"] == []
    run_dir = server.state / "jobs" / job["id"] / "run" / final["study"]
    assert not list((run_dir / "artifacts").glob(".*.tmp-*"))  # the killed stage left nothing half-written
    assert client.cancel(job["id"]) == {"id": job["id"], "deleted": True}
    assert not (server.state / "jobs" / job["id"]).exists()
    r = requests.get(f"{server.url}/jobs/{job['id']}", headers={"Authorization": f"Bearer {server.token}"}, timeout=10)
    assert r.status_code == 404


def test_results_and_queue_survive_a_restart(tmp_path: Path, nifti_study: Path) -> None:
    from medpipe_slicer import MedPipeClient

    pipelines = write_test_pipelines(tmp_path / "pipelines")
    first = MedpipeServer(tmp_path / "state", pipelines).start()
    try:
        c = MedPipeClient(first.url, first.token)
        assert c.info()["workers"] == 1  # one job at a time by default
        done = c.wait(c.submit("t_fast", nifti_study)["id"], poll_s=0.3, timeout=120)
        assert done["state"] == "done"
        before = c.download(done["id"], tmp_path / "before.seg.nrrd").read_bytes()
        slow = c.submit("t_slow", nifti_study)
        queued = c.submit("t_fast", nifti_study)
        _wait_for(lambda: c.job(slow["id"])["stages"]["seg"].get("progress"), what="the slow job to run")
        assert c.job(queued["id"])["state"] == "queued"
    finally:
        assert first.stop() in (0, -15)  # SIGTERM (uvicorn re-raises it after shutting down)
    assert "Application shutdown complete" in first.log.read_text()
    on_disk = {j: json.loads((tmp_path / "state" / "jobs" / j / "job.json").read_text())["state"]
               for j in (slow["id"], queued["id"])}
    assert on_disk == {slow["id"]: "queued", queued["id"]: "queued"}

    second = MedpipeServer(tmp_path / "state", pipelines).start()
    try:
        c = MedPipeClient(second.url, second.token)
        assert c.download(done["id"], tmp_path / "after.seg.nrrd").read_bytes() == before
        for job_id in (slow["id"], queued["id"]):
            final = c.wait(job_id, poll_s=0.3, timeout=180)
            assert final["state"] == "done" and final["requeued"] == 1, final
        run = json.loads((tmp_path / "state" / "jobs" / slow["id"] / "run" / slow["study"] / "run.json").read_text())
        assert run["stages"]["load"]["status"] == "cached"  # resumed, not recomputed
    finally:
        second.stop()
