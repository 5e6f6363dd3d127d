"""Fixtures for the pipeline-engine tests: test-only stage kinds, small NIfTI studies, pipeline files."""

from __future__ import annotations

from pathlib import Path

import pipeline_test_stages  # noqa: F401  (registers the t_* stage kinds; spawned workers re-import it)
import pytest
from pipeline_test_stages import make_volume, write_nifti

__all__ = ["BASIC_PIPELINE", "make_volume", "write_nifti", "snapshot"]

BASIC_PIPELINE = """\
name: basic
description: load, scale, threshold and count (test pipeline)
stages:
  count:
    kind: t_count
    inputs: {labels: seg.labels, image: scale.image}
  seg:
    kind: t_threshold_segment
    params: {threshold: 50}
    inputs: {image: scale.image}
  scale:
    kind: t_scale
    params: {factor: 2.0}
    inputs: {image: load.image}
  load:
    kind: t_load_nifti
    inputs: {study: input.study}
"""


@pytest.fixture
def basic_pipeline(tmp_path: Path) -> Path:
    p = tmp_path / "pipelines" / "basic.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(BASIC_PIPELINE)
    return p


@pytest.fixture
def nifti_study(tmp_path: Path) -> Path:
    return write_nifti(tmp_path / "studies" / "case_a.nii.gz", make_volume(1))


def snapshot(path: Path) -> dict[str, tuple[int, bytes]]:
    """(mtime_ns, bytes) of every file under ``path``: proof the input was not touched."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(f): (f.stat().st_mtime_ns, f.read_bytes()) for f in files}
