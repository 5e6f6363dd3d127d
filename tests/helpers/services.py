"""Real services for the tests: a ``medpipe serve`` process and Debian's Orthanc.

Each is started on 127.0.0.1 on a free port with its own temp state, and stopped by its
own pid (SIGTERM, then SIGKILL) — never by name.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ORTHANC_BIN = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
SLICER_MODULE = REPO / "workflows" / "slicer" / "MedPipe"
SERVER_TEST_STAGES = REPO / "tests" / "server"

TEST_PIPELINES = {
    "t_fast": """\
name: t_fast
description: test - load, two-organ threshold, write NIfTI + DICOM SEG
stages:
  load: {kind: load_study, params: {orientation: axial, largest: true}, inputs: {study: input.study}}
  seg: {kind: t_two_organs, params: {low: 100, high: 200}, inputs: {image: load.image}}
  write:
    kind: write
    params: {formats: [nifti, dicom_seg], name: organs}
    inputs: {labels: seg.labels, source: load.source, reference: load.image}
outputs: [write.files]
""",
}
TEST_PIPELINES["t_slow"] = TEST_PIPELINES["t_fast"].replace("name: t_fast", "name: t_slow").replace(
    "high: 200}", "high: 200, sleep_s: 0.25}")
TEST_PIPELINES["t_crash"] = TEST_PIPELINES["t_fast"].replace("name: t_fast", "name: t_crash").replace(
    "high: 200}", "high: 200, crash: true}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_test_pipelines(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in TEST_PIPELINES.items():
        (folder / f"{name}.yaml").write_text(text)
    return folder


def subprocess_env(pipelines: Path | None = None) -> dict[str, str]:
    """The environment a subprocess needs to see this checkout and the test stage kinds."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(SERVER_TEST_STAGES), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env.pop("MEDPIPE_SERVER_TOKEN", None)
    if pipelines is not None:
        env["MEDPIPE_PIPELINES"] = str(pipelines)
    return env


def _stop(proc: subprocess.Popen, timeout: float = 40.0) -> int | None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


class MedpipeServer:
    """``python -m medpipe serve`` in its own process."""

    def __init__(self, state: Path, pipelines: Path, *, workers: int = 1, max_upload_mb: float = 4.0,
                 extra: list[str] | None = None, stage_module: str | None = "server_test_stages",
                 env: dict[str, str] | None = None) -> None:
        self.state = state
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = state.parent / f"{state.name}-server.log"
        self.cmd = [sys.executable, "-m", "medpipe", "serve", "--state", str(state), "--port", str(self.port),
                    "--workers", str(workers), "--max-upload-mb", str(max_upload_mb),
                    *(["--stage-module", stage_module] if stage_module else []), *(extra or [])]
        self.env = subprocess_env(pipelines)
        if env:  # e.g. the thread count and cache the other engines of a comparison run with
            self.env.update({k: v for k, v in env.items() if k != "PYTHONPATH"})
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> MedpipeServer:
        self.state.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=str(REPO))
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"medpipe serve exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if json.loads(r.read()).get("status") == "ok":
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"medpipe serve did not answer within {timeout} s: {self.log.read_text()[-2000:]}")

    @property
    def token(self) -> str:
        return (self.state / "token").read_text().strip()

    def stop(self) -> int | None:
        return _stop(self.proc) if self.proc is not None else None


class Orthanc:
    """Debian's Orthanc with the DICOMweb plugin, authentication on, HTTP for localhost only."""

    USER = "medpipe"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.http_port, self.dicom_port, self.move_port = free_port(), free_port(), free_port()
        self.password = os.urandom(12).hex()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.proc: subprocess.Popen | None = None

    def config(self) -> dict:
        return {
            "Name": "medpipe-test", "StorageDirectory": str(self.root / "db"), "IndexDirectory": str(self.root / "db"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False, "AuthenticationEnabled": True,
            "RegisteredUsers": {self.USER: self.password},
            "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "StableAge": 1, "DicomCheckCalledAet": True, "DicomCheckModalityHost": True,
            "DicomAlwaysAllowStore": False, "DicomAlwaysAllowFind": False, "DicomAlwaysAllowMove": False,
            "DicomModalities": {"medpipe": {"AET": "MEDPIPE", "Host": "127.0.0.1", "Port": self.move_port,
                                            "AllowEcho": True, "AllowFind": True, "AllowMove": True,
                                            "AllowStore": True, "AllowGet": True}},
            "StorageCompression": False, "HttpTimeout": 60,
        }

    def start(self, timeout: float = 30.0) -> Orthanc:
        (self.root / "db").mkdir(parents=True, exist_ok=True)
        cfg = self.root / "orthanc.json"
        cfg.write_text(json.dumps(self.config(), indent=2))
        os.chmod(cfg, 0o600)
        log = open(self.root / "orthanc.log", "ab")
        self.proc = subprocess.Popen([str(ORTHANC_BIN), str(cfg)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.proc.returncode}: "
                                   f"{(self.root / 'orthanc.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/system", timeout=2):
                    pass
            except urllib.error.HTTPError as exc:
                if exc.code == 401:  # up, and refusing us without credentials: as configured
                    return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("Orthanc did not start")

    def pacs_yaml(self, path: Path, env_var: str) -> Path:
        """A medpipe PACS config naming this Orthanc three ways (password from ``env_var``)."""
        path.write_text(f"""\
servers:
  orthanc:
    api: dicomweb
    url: {self.url}/dicom-web
    username: {self.USER}
    password_env: {env_var}
  orthanc-rest:
    api: orthanc
    url: {self.url}
    username: {self.USER}
    password_env: {env_var}
  orthanc-dimse:
    api: dimse
    host: 127.0.0.1
    port: {self.dicom_port}
    ae_title: ORTHANC
    calling_ae: MEDPIPE
    move_listen: 127.0.0.1:{self.move_port}
""")
        return path

    def stop(self) -> int | None:
        return _stop(self.proc) if self.proc is not None else None
