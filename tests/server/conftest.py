"""Fixtures for the server tests: a real ``medpipe serve`` process, small studies, the client."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
from services import SLICER_MODULE, MedpipeServer, write_test_pipelines  # noqa: E402

sys.path.insert(0, str(SLICER_MODULE))
sys.path.insert(0, str(Path(__file__).resolve().parent))

pytest.importorskip("fastapi", reason="the server tests need the server extra: pip install 'medpipe[server]'")
pytest.importorskip("uvicorn", reason="the server tests need the server extra: pip install 'medpipe[server]'")


def phantom_volume() -> tuple[np.ndarray, np.ndarray]:
    """A 32x32x24 volume with a 'liver' (150) and a 'spleen' (300) block, and its affine."""
    a = np.zeros((32, 32, 24), np.float32)
    a[5:15, 5:15, 5:15] = 150
    a[20:28, 20:28, 10:20] = 300
    affine = np.array([[1.5, 0, 0, -20.0], [0, 1.25, 0, 10.0], [0, 0, 2.0, 30.0], [0, 0, 0, 1]])
    return a, affine


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> MedpipeServer:
    root = tmp_path_factory.mktemp("server")
    srv = MedpipeServer(root / "state", write_test_pipelines(root / "pipelines"), workers=2, max_upload_mb=1.0).start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    from medpipe_slicer import MedPipeClient

    return MedPipeClient(server.url, server.token, timeout=30)


@pytest.fixture(scope="module")
def nifti_study(tmp_path_factory) -> Path:
    import nibabel as nib

    a, affine = phantom_volume()
    path = tmp_path_factory.mktemp("studies") / "case.nii.gz"
    nib.Nifti1Image(a, affine).to_filename(str(path))
    return path
