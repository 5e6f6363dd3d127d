"""A real Orthanc (Debian's, with its DICOMweb plugin and authentication on) as source and sink.

Skipped with a reason where the Debian packages are missing (``make test`` installs them
when run as root). Orthanc runs on 127.0.0.1 ports picked free, with a temp config, and is
stopped by its own pid.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pydicom
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from services import DICOMWEB_PLUGIN, ORTHANC_BIN, Orthanc, free_port, subprocess_env, write_test_pipelines  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

pytestmark = pytest.mark.skipif(
    not (ORTHANC_BIN.exists() and DICOMWEB_PLUGIN.exists()),
    reason="Debian's orthanc + orthanc-dicomweb are not installed (make test installs them when run as root)",
)
pytest.importorskip("dicomweb_client", reason="needs the server extra: pip install 'medpipe[server]'")
pytest.importorskip("pynetdicom", reason="needs the server extra: pip install 'medpipe[server]'")

PASSWORD_ENV = "MEDPIPE_TEST_ORTHANC_PASSWORD"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory) -> Orthanc:
    o = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    yield o
    o.stop()


@pytest.fixture(scope="module")
def pacs(orthanc, tmp_path_factory):
    """(config path, servers) with the password in the environment, never in the file."""
    import os

    from medpipe.io.pacs import load_pacs_config

    os.environ[PASSWORD_ENV] = orthanc.password
    cfg = orthanc.pacs_yaml(tmp_path_factory.mktemp("pacs") / "pacs.yaml", PASSWORD_ENV)
    assert orthanc.password not in cfg.read_text()
    yield cfg, load_pacs_config(cfg)
    os.environ.pop(PASSWORD_ENV, None)


@pytest.fixture(scope="module")
def example(tmp_path_factory, pacs) -> dict:
    """The example study, stored in Orthanc with ``medpipe pacs push`` (STOW-RS)."""
    from medpipe.cli import main
    from medpipe.data.example_study import write_example_study

    folder = tmp_path_factory.mktemp("example") / "study"
    write_example_study(folder)
    files = sorted(p for p in (folder / "DICOM").rglob("*") if p.is_file())
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    ct = [h for h in headers if h.Modality == "CT" and "COR" not in str(h.get("SeriesDescription", ""))]
    assert main(["pacs", "push", str(folder / "DICOM"), "--server", "orthanc", "--pacs-config", str(pacs[0])]) == 0
    return {"folder": folder, "study_uid": str(headers[0].StudyInstanceUID), "sops": {str(h.SOPInstanceUID) for h in headers},
            "ct_series": str(ct[0].SeriesInstanceUID), "n": len(files)}


def _instances(folder: Path) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in folder.rglob("*.dcm")}


def test_wrong_or_missing_credentials_are_named(orthanc) -> None:
    from medpipe.io.pacs import PacsError, PacsServer, open_client

    for user, password in ((None, None), (Orthanc.USER, "wrong")):
        server = PacsServer(name="t", api="dicomweb", url=f"{orthanc.url}/dicom-web", username=user, password=password)
        with pytest.raises(PacsError, match=r"refused the credentials while searching studies \(QIDO-RS\) \(HTTP 401\)"):
            open_client(server).find_studies({})
    down = PacsServer(name="down", api="orthanc", url=f"http://127.0.0.1:{free_port()}", timeout_s=3)
    with pytest.raises(PacsError, match="cannot be reached while searching studies; is it running"):
        open_client(down).find_studies({})


def test_config_refuses_secrets_in_the_wrong_places(tmp_path: Path) -> None:
    from medpipe.io.pacs import PacsError, load_pacs_config, parse_study_ref

    secret = tmp_path / "pw"
    secret.write_text("x")
    secret.chmod(0o644)
    cfg = tmp_path / "pacs.yaml"
    cfg.write_text(f"servers:\n  a:\n    url: http://127.0.0.1:1/dicom-web\n    password_file: {secret}\n")
    with pytest.raises(PacsError, match="password file .* is readable by others; chmod 600 it"):
        load_pacs_config(cfg)
    with pytest.raises(PacsError, match="credentials do not belong in a study reference"):
        parse_study_ref("pacs://user:pw@host:8042/dicom-web/studies/1.2.3", {})
    with pytest.raises(PacsError, match="is not a DICOM UID"):
        parse_study_ref("pacs://a/studies/1.2.3/../../x", {})


def test_find_and_pull_three_ways(example, pacs, tmp_path: Path, capsys) -> None:
    """QIDO + WADO-RS (DICOMweb), Orthanc REST, and C-FIND + C-MOVE give the same instances."""
    from medpipe.cli import main
    from medpipe.io.pacs import open_client

    cfg, servers = pacs
    for name in ("orthanc", "orthanc-rest", "orthanc-dimse"):
        rows = open_client(servers[name]).find_studies({"PatientID": "PHANTOM001"})
        assert [r["StudyInstanceUID"] for r in rows] == [example["study_uid"]], name
        out = tmp_path / name
        rc = main(["pacs", "pull", str(out), "--server", name, "--study", example["study_uid"], "--pacs-config", str(cfg)])
        assert rc == 0
        assert f"pulled {example['n']} instances of study {example['study_uid']}" in capsys.readouterr().out
        assert _instances(out) == example["sops"], name
        series = {p.parent.name for p in out.rglob("*.dcm")}
        assert example["ct_series"] in series  # <SeriesInstanceUID>/<SOPInstanceUID>.dcm
    rc = main(["pacs", "pull", str(tmp_path / "none"), "--server", "orthanc-rest", "--study", "1.2.3.4",
               "--pacs-config", str(cfg)])
    assert rc != 0 and "holds no study 1.2.3.4" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_c_store_push(example, pacs, tmp_path: Path) -> None:
    from pydicom.uid import generate_uid

    from medpipe.io.pacs import open_client, push_files

    cfg, servers = pacs
    src = next(p for p in (example["folder"] / "DICOM").rglob("*") if p.is_file() and p.suffix == ".dcm")
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.PatientID = "CSTORE01"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = tmp_path / "one.dcm"
    ds.save_as(path)
    assert push_files(servers["orthanc-dimse"], [path]) == [str(ds.SOPInstanceUID)]
    rows = open_client(servers["orthanc-rest"]).find_studies({"PatientID": "CSTORE01"})
    assert [r["StudyInstanceUID"] for r in rows] == [str(ds.StudyInstanceUID)]


def _segs_in(servers, study_uid: str) -> list:
    from dicomweb_client import DICOMwebClient

    from medpipe.io.pacs import _session

    s = servers["orthanc"]
    client = DICOMwebClient(s.url, session=_session(s))
    series = client.search_for_series(study_uid, search_filters={"Modality": "SEG"})
    out = []
    for item in series:
        uid = item["0020000E"]["Value"][0]
        out.extend(client.retrieve_series(study_uid, uid))
    return out


@pytest.mark.slow
def test_run_ct_organs_from_the_pacs_and_find_the_seg_back(example, pacs, tmp_path: Path, capsys) -> None:
    """``medpipe run ct_organs pacs://orthanc/studies/UID``: the SEG lands in Orthanc, on the CT series."""
    from medpipe.cli import main

    cfg, servers = pacs
    ref = f"pacs://orthanc/studies/{example['study_uid']}"
    out = tmp_path / "runs"
    rc = main(["run", "ct_organs", ref, "-o", str(out), "--pacs-config", str(cfg)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "sent 1 DICOM SEG instance(s) to PACS 'orthanc'" in text
    segs = _segs_in(servers, example["study_uid"])
    assert len(segs) == 1
    seg = segs[0]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == example["ct_series"]
    assert seg.StudyInstanceUID == example["study_uid"]
    names = [s.SegmentLabel for s in seg.SegmentSequence]
    assert "liver" in names and "spleen" in names
    record = json.loads((out / example["study_uid"] / "pacs.json").read_text())
    assert record["sop_instance_uids"] == [str(seg.SOPInstanceUID)]

    rc = main(["run", "ct_organs", ref, "-o", str(out), "--pacs-config", str(cfg)])
    assert rc == 0 and "unchanged, not sent again" in capsys.readouterr().out
    assert len(_segs_in(servers, example["study_uid"])) == 1  # at most once


def test_server_job_on_a_pacs_study(example, pacs, tmp_path: Path) -> None:
    """A server job that names a configured PACS study; the SEG goes back to that PACS."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "workflows" / "slicer" / "MedPipe"))
    from medpipe_slicer import MedPipeClient
    from services import MedpipeServer

    cfg, servers = pacs
    srv = MedpipeServer(tmp_path / "state", write_test_pipelines(tmp_path / "pipelines"),
                        extra=["--pacs-config", str(cfg), "--pipeline", "t_fast"])
    srv.env[PASSWORD_ENV] = servers["orthanc"].password
    srv.start()
    try:
        c = MedPipeClient(srv.url, srv.token)
        assert c.info()["pacs"] == ["orthanc", "orthanc-dimse", "orthanc-rest"]
        before = len(_segs_in(servers, example["study_uid"]))
        job = c.wait(c.submit("t_fast", study=f"pacs://orthanc-rest/studies/{example['study_uid']}")["id"],
                     poll_s=0.5, timeout=240)
        assert job["state"] == "done", job
        assert job["input"]["source"] == "pacs" and "dicom_seg" in job["results"]
        assert len(job["pacs"]["sent_sop_instance_uids"]) == 1
        segs = _segs_in(servers, example["study_uid"])
        assert len(segs) == before + 1
        assert {s.ReferencedSeriesSequence[0].SeriesInstanceUID for s in segs} == {example["ct_series"]}
    finally:
        srv.stop()


def test_watch_runs_each_new_stable_study_once_and_resumes(example, pacs, tmp_path: Path, monkeypatch) -> None:
    import numpy as np
    from pydicom.uid import generate_uid

    from medpipe.data.dicom_writer import write_dicom_series
    from medpipe.image import Image
    from medpipe.io.pacs import push_files
    from medpipe.pipeline.pacs_watch import state_path_for, watch
    from medpipe.pipeline.spec import load_pipeline

    cfg, servers = pacs
    rest = servers["orthanc-rest"]
    monkeypatch.setenv("PYTHONPATH", subprocess_env()["PYTHONPATH"])
    import server_test_stages  # noqa: F401  (registers t_two_organs here and in spawned workers)

    spec = load_pipeline(write_test_pipelines(tmp_path / "pipelines") / "t_fast.yaml")
    out = tmp_path / "watch"
    time.sleep(3.0)  # let Orthanc report what earlier tests stored as stable before we start "from now"
    state = watch(rest, spec, out, max_polls=1, from_now=True)  # start at the end of the feed
    assert state["studies"] == {} and state["since"] > 0

    a = np.zeros((32, 32, 24), np.float32)
    a[5:15, 5:15, 5:15] = 150
    uid = generate_uid()
    files = write_dicom_series(Image(a[None], np.diag([1.5, 1.5, 2.0, 1.0])), tmp_path / "new", modality="CT",
                               patient_id="WATCH01", study_uid=uid, seed=77)
    push_files(rest, files)

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and state["studies"].get(uid, {}).get("status") != "done":
        state = watch(rest, spec, out, max_polls=1, poll_s=0.5)
        time.sleep(1.0)
    assert state["studies"][uid]["status"] == "done" and state["studies"][uid]["sent"] == 1, state
    assert set(state["studies"]) == {uid}  # the example study was there before: not ours to run
    run_json = out / uid / "run.json"
    first = run_json.stat().st_mtime_ns

    time.sleep(2.5)  # our SEG made Orthanc report the study stable again
    state = watch(rest, spec, out, max_polls=2, poll_s=0.5)
    assert run_json.stat().st_mtime_ns == first and state["studies"][uid]["status"] == "done"
    assert len(_segs_in(servers, uid)) == 1
    saved = json.loads(state_path_for(out, rest).read_text())
    assert saved["since"] == state["since"] and np.isscalar(saved["since"])
