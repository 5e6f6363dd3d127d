"""``make docker-check``: build the CPU image here, run ct_organs in it, compare with the host.

No image registry is reachable from this machine and pip inside a build cannot verify
PyPI's certificate, so: the base image is Debian bookworm made by ``debootstrap`` and
``docker import``; the Python packages are wheels downloaded on the host (the host
venv's exact versions, with the CPU build of torch) into ``build/docker/wheels``; Debian's
``docker.io`` daemon is started with its own data root under ``build/docker`` (no iptables,
no bridge: builds and containers run with ``--network none``) and stopped by its pid.

Then the example study (``medpipe data example``) runs through ``medpipe run ct_organs`` on
the host and in the container, and every published artifact's hash is compared. Both
runs pin ``segment.precision=fp32 backend=openvino``: ``auto`` is a per-machine measurement
(docs/inference.md), and a fresh container would measure again. Image size, build time
and the comparison go to RESULTS.md. Needs root, ``docker.io`` and ``debootstrap``.

Run: python benchmarks/docker_image.py [--keep-daemon]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks._results import markdown_table, record  # noqa: E402

WORK = REPO / "build" / "docker"
WHEELS = WORK / "wheels"
ROOTFS = WORK / "rootfs"
SOCK = WORK / "docker.sock"
BASE_TAG = "medpipe-base:bookworm"
IMAGE = "medpipe:cpu"
CPU_TORCH = "torch==2.13.0+cpu"  # the CPU wheel on this disk; 2.14.1 here is the CUDA build (5.5 GB)
PINNED = ["segment.precision=fp32", "segment.backend=openvino"]
DOCKER = "/usr/bin/docker"  # Debian's client, the same release as the daemon


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)
    if proc.returncode != 0:
        raise SystemExit(f"docker-check: {' '.join(cmd[:4])} ... failed (exit {proc.returncode}):\n"
                         f"{(proc.stdout + proc.stderr)[-3000:]}")
    return proc


def docker(*args: str, **kw) -> subprocess.CompletedProcess[str]:
    return sh([DOCKER, "-H", f"unix://{SOCK}", *args], env={**os.environ, "DOCKER_BUILDKIT": "0"}, **kw)


def download_wheels() -> None:
    """The host venv's versions (torch: its CPU build) as wheels, plus setuptools/wheel to build medpipe."""
    import tomllib

    WHEELS.mkdir(parents=True, exist_ok=True)
    freeze = sh([sys.executable, "-m", "pip", "freeze", "--exclude-editable"]).stdout.splitlines()
    skip = ("torch==", "torchvision==", "triton==", "nvidia-", "cuda-")
    pins = [ln for ln in freeze if "==" in ln and not ln.lower().startswith(skip)]
    constraints = WORK / "constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    deps = [d for d in deps if not d.startswith("torch")]
    sh([sys.executable, "-m", "pip", "download", "-q", "--dest", str(WHEELS), "--only-binary=:all:",
        "-c", str(constraints), CPU_TORCH, *deps, "setuptools>=68", "wheel"])


def base_image() -> None:
    if not (ROOTFS / "usr" / "bin" / "python3").exists():
        shutil.rmtree(ROOTFS, ignore_errors=True)
        sh(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates,libgomp1",
            "bookworm", str(ROOTFS), "http://deb.debian.org/debian"])
    if docker("images", "-q", BASE_TAG).stdout.strip():
        return
    tar = subprocess.Popen(["tar", "-C", str(ROOTFS), "-c", "."], stdout=subprocess.PIPE)
    sh([DOCKER, "-H", f"unix://{SOCK}", "import", "-", BASE_TAG], stdin=tar.stdout)
    tar.wait()


class Daemon:
    """dockerd with its own data root; stopped by its own pid."""

    def __enter__(self) -> Daemon:
        if not shutil.which("dockerd"):
            raise SystemExit("docker-check: dockerd is missing: apt-get install docker.io (make system-deps)")
        self.log = open(WORK / "dockerd.log", "w")  # noqa: SIM115 - closed in __exit__
        self.proc = subprocess.Popen(
            ["dockerd", "--iptables=false", "--bridge=none", "--data-root", str(WORK / "data"),
             "--exec-root", str(WORK / "exec"), "--pidfile", str(WORK / "dockerd.pid"), "-H", f"unix://{SOCK}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if SOCK.exists() and subprocess.run([DOCKER, "-H", f"unix://{SOCK}", "info"], capture_output=True).returncode == 0:
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        self.__exit__()
        raise SystemExit(f"docker-check: dockerd did not start; see {WORK / 'dockerd.log'}")

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def run_host(study: Path, out: Path) -> float:
    t0 = time.perf_counter()
    sh([sys.executable, "-m", "medpipe", "run", "ct_organs", str(study), "-o", str(out),
        *(f"--set={s}" for s in PINNED)], env={**os.environ, "PYTHONPATH": str(REPO)})
    return time.perf_counter() - t0


def run_container(study: Path, out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    os.chown(out, 1000, 1000)  # the image's non-root user writes here
    t0 = time.perf_counter()
    inside = str(study)  # the same path as on the host: run folders record the study's path and name
    docker("run", "--rm", "--network", "none", "--shm-size", "1g", "-v", f"{study}:{inside}:ro", "-v", f"{out}:/out",
           IMAGE, "run", "ct_organs", inside, "-o", "/out", *(f"--set={s}" for s in PINNED))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("docker-check: needs root (it starts its own dockerd)")
    from medpipe.pipeline.provenance import published_hashes

    WORK.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    download_wheels()
    wheels_s = time.perf_counter() - t0
    example = WORK / "example"
    shutil.rmtree(example, ignore_errors=True)
    sh([sys.executable, "-m", "medpipe", "data", "example", str(example)], env={**os.environ, "PYTHONPATH": str(REPO)})
    host_out, box_out = WORK / "out_host", WORK / "out_container"
    for d in (host_out, box_out):
        shutil.rmtree(d, ignore_errors=True)
    with Daemon():
        base_image()
        t1 = time.perf_counter()
        docker("build", "--no-cache", "--network", "none", "-f", "docker/Dockerfile.cpu", "--build-arg", f"BASE_IMAGE={BASE_TAG}",
               "-t", IMAGE, ".", cwd=REPO)
        build_s = time.perf_counter() - t1
        size = int(docker("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout.strip())
        user = docker("image", "inspect", "--format", "{{.Config.User}}", IMAGE).stdout.strip()
        box_s = run_container(example, box_out)
    host_s = run_host(example, host_out)
    studies = sorted(p.parent.name for p in host_out.glob("*/run.json"))
    rows, differ = [], []
    for s in studies:
        a, b = published_hashes(host_out / s), published_hashes(box_out / s)
        bad = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        differ += [f"{s}/{k}" for k in bad]
        rows.append([s, len(set(a) | set(b)), len(bad)])
    body = (
        f"CPU image from `docker/Dockerfile.cpu` on a debootstrap bookworm base (Debian docker.io 20.10, legacy "
        f"builder), {CPU_TORCH}, every other package at the host venv's version. Load average {load:.1f} "
        "(2 shared cores: times are upper bounds).\n\n"
        + markdown_table(["what", "value"], [
            ["wheel download (host)", f"{wheels_s:.0f} s"], ["image build", f"{build_s:.0f} s"],
            ["image size", f"{size / 2**30:.2f} GiB"], ["image user", user],
            ["ct_organs on the example study, container", f"{box_s:.1f} s"],
            ["ct_organs on the example study, host", f"{host_s:.1f} s"]])
        + "\n\nPublished artifacts, host vs container (`segment.precision=fp32`, `backend=openvino` on both):\n\n"
        + markdown_table(["study", "files", "differ"], rows)
        + ("\n\nDiffering: " + ", ".join(differ) if differ else "\n\nEvery published file is byte-identical.")
    )
    print(body)
    record("docker", "Docker CPU image: size, build time, same result as the host", body, command="make docker-check")
    if differ or not studies:
        raise SystemExit("docker-check: the container's result differs from the host's")


if __name__ == "__main__":
    main()
