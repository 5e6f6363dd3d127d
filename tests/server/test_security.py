"""The server's security promises, checked against a real running ``medpipe serve``."""

from __future__ import annotations

import gzip
import io
import stat
import zipfile
from pathlib import Path

import numpy as np
import psutil
import pytest
import requests


def _auth(server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token}"}


def _job_dirs(server) -> list[str]:
    jobs = server.state / "jobs"
    return sorted(p.name for p in jobs.iterdir()) if jobs.is_dir() else []


def test_token_file_is_private_and_never_logged(server) -> None:
    token_file = server.state / "token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert len(server.token) >= 32
    requests.get(f"{server.url}/info", headers=_auth(server), timeout=10)
    log = server.log.read_text()
    assert "bearer token in" in log and str(token_file) in log
    assert server.token not in log


def test_binds_to_localhost_only(server) -> None:
    listening = [c for c in psutil.Process(server.proc.pid).net_connections(kind="tcp") if c.status == "LISTEN"]
    assert listening and {c.laddr.ip for c in listening} == {"127.0.0.1"}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-0123456789abcdef"},
                                     {"Authorization": "Basic bWVkcGlwZTpzM2NyZXQ="}])
def test_every_endpoint_but_health_needs_the_token(server, headers, nifti_study: Path) -> None:
    assert requests.get(f"{server.url}/health", headers=headers, timeout=10).json() == {"status": "ok"}
    before = _job_dirs(server)
    for method, path in [("GET", "/info"), ("GET", "/jobs"), ("GET", "/jobs/" + "0" * 32),
                         ("DELETE", "/jobs/" + "0" * 32), ("GET", "/jobs/" + "0" * 32 + "/result")]:
        r = requests.request(method, f"{server.url}{path}", headers=headers, timeout=10)
        assert r.status_code == 401, (method, path)
        assert r.headers["www-authenticate"] == "Bearer"
        assert "bearer token" in r.json()["detail"]
    r = requests.post(f"{server.url}/jobs", headers=headers, data={"pipeline": "t_fast"},
                      files={"file": ("case.nii.gz", nifti_study.read_bytes())}, timeout=10)
    assert r.status_code == 401
    assert _job_dirs(server) == before  # refused before the body was read: nothing stored


def test_no_cors_headers(server) -> None:
    pre = requests.options(f"{server.url}/jobs", timeout=10, headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in {k.lower() for k in pre.headers}
    r = requests.get(f"{server.url}/info", headers={**_auth(server), "Origin": "https://evil.example"}, timeout=10)
    assert r.status_code == 200 and "access-control-allow-origin" not in {k.lower() for k in r.headers}


@pytest.mark.parametrize("name", ["../../escape.nii.gz", "/tmp/absolute.nii.gz", "..\\..\\win.nii.gz",
                                  "a/../../b/../nested.nii.gz"])
def test_uploaded_names_never_become_paths(server, nifti_study: Path, name: str) -> None:
    r = requests.post(f"{server.url}/jobs", headers=_auth(server), data={"pipeline": "t_fast"},
                      files={"file": (name, nifti_study.read_bytes())}, timeout=30)
    assert r.status_code == 202, r.text
    job = r.json()
    folder = server.state / "jobs" / job["id"] / "input"
    assert [p.name for p in folder.iterdir()] == ["input.nii.gz"]
    assert job["input"]["name"] == Path(name.replace("\\", "/")).name and "/" not in job["input"]["name"]
    root = server.state.parent
    stray = [p for p in root.rglob("*") if p.name in ("escape.nii.gz", "absolute.nii.gz", "win.nii.gz", "nested.nii.gz")]
    assert stray == [] and not Path("/tmp/absolute.nii.gz").exists()
    requests.delete(f"{server.url}/jobs/{job['id']}", headers=_auth(server), timeout=10)


def _refused(server, name: str, payload: bytes, status: int, words: str) -> None:
    before = _job_dirs(server)
    r = requests.post(f"{server.url}/jobs", headers=_auth(server), data={"pipeline": "t_fast"},
                      files={"file": (name, payload)}, timeout=60)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert _job_dirs(server) == before  # nothing left behind, not even a temp folder


def test_oversized_upload_is_refused_and_nothing_stays(server) -> None:
    big = gzip.compress(b"\0" * 10) + bytes(2 * 2**20)  # 2 MiB > the test server's 1 MiB limit
    _refused(server, "big.nii.gz", big, 413, "larger than the server's upload limit of 1 MiB")


def test_chunked_body_without_length_is_cut_off(server) -> None:
    def body():
        yield b"--b\r\nContent-Disposition: form-data; name=\"pipeline\"\r\n\r\nt_fast\r\n"
        yield b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.nii.gz\"\r\n\r\n\x1f\x8b"
        for _ in range(12):
            yield bytes(256 * 1024)  # 3 MiB in all, with no Content-Length (chunked)

    before = _job_dirs(server)
    r = requests.post(f"{server.url}/jobs", data=body(), timeout=60,
                      headers={**_auth(server), "Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and "upload limit of 1 MiB" in r.json()["detail"]
    assert _job_dirs(server) == before


def test_slightly_oversized_file_is_refused_by_the_upload_check(server) -> None:
    _refused(server, "big.nii.gz", b"\x1f\x8b" + bytes(2**20 + 10), 413, "larger than the server's limit of 1 MiB")


def test_corrupt_uploads_get_a_clear_4xx(server, nifti_study: Path) -> None:
    _refused(server, "scan.nii.gz", b"this is not a nifti file at all" * 20, 422, "is not a .nii.gz file")
    _refused(server, "scan.nii.gz", gzip.compress(b"garbage" * 100), 422, "could not be read as nifti")
    _refused(server, "scan.nrrd", b"NRRD0004\ntype: banana\n\n", 422, "upload 'scan.nrrd'")
    _refused(server, "series.zip", b"PK\x03\x04" + b"\0" * 300, 422, "is not a readable zip archive")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("notes.txt", "no DICOM in here")
    _refused(server, "series.zip", buf.getvalue(), 422, "no DICOM image series found in the archive")
    _refused(server, "script.sh", b"#!/bin/sh\nrm -rf /\n", 415, "expected a NIfTI (.nii, .nii.gz), NRRD")
    _refused(server, "empty.nii.gz", b"", 422, "is empty")
    _refused(server, "raw.h5", b"not hdf5" * 50, 422, "is not a .h5 file")
    _refused(server, "raw.h5", b"\x89HDF\r\n\x1a\n" + bytes(400), 422,
             "is an HDF5 file that cannot be read: it is truncated or damaged")


def test_zip_bomb_is_refused(server) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.dcm", b"\0" * (6 * 2**20))  # unpacks to 6 MiB > 4x the 1 MiB limit
    assert len(buf.getvalue()) < 2**20
    _refused(server, "bomb.zip", buf.getvalue(), 413, "unpacks to 6 MiB, over the server's limit of 4 MiB")


def test_bad_requests_name_the_problem(server, nifti_study: Path) -> None:
    url, auth = f"{server.url}/jobs", _auth(server)
    r = requests.post(url, headers=auth, data={"pipeline": "no_such"}, files={"file": ("a.nii.gz", b"x")}, timeout=10)
    assert r.status_code == 422 and r.json()["detail"].startswith("unknown pipeline 'no_such' (available: ")
    assert "t_fast" in r.json()["detail"] and "ct_organs" in r.json()["detail"]
    r = requests.post(url, headers=auth, data={"pipeline": "t_fast"}, timeout=10)
    assert r.status_code == 422 and "send either a file" in r.json()["detail"]
    r = requests.post(url, headers=auth, files={"file": ("a.nii.gz", b"x")}, timeout=10)
    assert r.status_code == 422 and r.json()["detail"] == "field 'pipeline' is missing"
    r = requests.post(url, headers=auth, data={"pipeline": "t_fast", "study": "pacs://evil.example:80/studies/1.2.3"},
                      timeout=10)
    assert r.status_code == 422 and "only configured PACS names are accepted" in r.json()["detail"]
    r = requests.get(f"{server.url}/jobs/../../etc/passwd", headers=auth, timeout=10)
    assert r.status_code == 404
    r = requests.get(f"{server.url}/jobs/not-a-job-id", headers=auth, timeout=10)
    assert r.status_code == 404 and "job ids are 32 hexadecimal characters" in r.json()["detail"]


def test_a_kspace_upload_is_checked_and_names_its_study(server, tmp_path: Path) -> None:
    from medpipe.io.kspace import KSpace, axial_affine, write_kspace

    rng = np.random.default_rng(0)
    data = (rng.standard_normal((2, 3, 16, 16)) + 1j * rng.standard_normal((2, 3, 16, 16))).astype(np.complex64)
    path = write_kspace(KSpace(data, np.ones((1, 1, 16), bool), axial_affine(16, 16, 3)), tmp_path / "Head Scan.h5")
    r = requests.post(f"{server.url}/jobs", headers=_auth(server), data={"pipeline": "t_fast"},
                      files={"file": (path.name, path.read_bytes())}, timeout=30)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["input"]["kind"] == "kspace" and job["input"]["coils"] == 2 and job["study"] == "Head_Scan"
    assert [p.name for p in (server.state / "jobs" / job["id"] / "input").iterdir()] == ["input.h5"]
    requests.delete(f"{server.url}/jobs/{job['id']}", headers=_auth(server), timeout=10)
