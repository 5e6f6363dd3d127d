"""Shared by the Snakemake/Airflow tests: where the engines live, test studies, run-folder hashes.

The engines are installed in their own virtual environments (their pins clash with the
project's: Makefile ``engines``) and talk to medpipe through ``medpipe plan`` / ``medpipe
stage``, run here as ``<this python> -m medpipe`` with the worktree and the test-only stage
kinds (``MEDPIPE_STAGE_MODULES=pipeline_test_stages``) importable.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PIPELINE_TESTS = REPO / "tests" / "pipeline"
SNAKEFILE = REPO / "workflows" / "snakemake" / "Snakefile"
PROFILES = REPO / "workflows" / "snakemake" / "profiles"
AIRFLOW_DIR = REPO / "workflows" / "airflow"
for _p in (PIPELINE_TESTS, REPO):  # the test stage kinds; benchmarks.engines
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from pipeline_test_stages import BLOCK_MARKER_ENV, make_volume, write_nifti  # noqa: E402

from medpipe.pipeline.provenance import published_hashes as artifact_hashes  # noqa: E402

__all__ = ["REPO", "SNAKEFILE", "PROFILES", "AIRFLOW_DIR", "BLOCK_MARKER_ENV", "ENGINE_PIPELINE", "engine_tool",
           "engine_env", "medpipe_command", "make_studies", "artifact_hashes", "run"]

# load -> scale -> hold (blocks while a marker exists: the kill test) -> seg -> count
ENGINE_PIPELINE = """\
name: engine_test
description: the test pipeline the engine tests schedule
stages:
  load:  {kind: t_load_nifti, inputs: {study: input.study}}
  scale: {kind: t_scale, params: {factor: 2.0}, inputs: {image: load.image}, resources: {threads: 2, mem_mb: 500}}
  hold:  {kind: t_block_on_marker, inputs: {image: scale.image}}
  seg:   {kind: t_threshold_segment, params: {threshold: 50}, inputs: {image: hold.image}}
  count: {kind: t_count, inputs: {labels: seg.labels, image: scale.image}}
outputs: [count.table]
"""


def engine_tool(name: str) -> Path:
    """``snakemake`` or the Airflow venv's ``python``; skipped (failed under CI) when not installed."""
    venv = {"snakemake": ".venv-snakemake", "airflow": ".venv-airflow"}[name]
    env = os.environ.get(f"MEDPIPE_{name.upper()}_VENV")
    root = Path(env) if env else REPO / venv
    tool = root / "bin" / ("snakemake" if name == "snakemake" else "python")
    if not tool.exists():
        msg = f"{name} is not installed in {root}: run `make engines` (its own venv, see docs/workflows.md)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return tool


def medpipe_command() -> str:
    return f"{shlex.quote(sys.executable)} -m medpipe"


def engine_env(**extra: str) -> dict[str, str]:
    """The environment engine jobs run in: this worktree's medpipe and the test stage kinds."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(PIPELINE_TESTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["MEDPIPE_STAGE_MODULES"] = "pipeline_test_stages"
    env["MEDPIPE_COMMAND"] = medpipe_command()
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


def make_studies(folder: Path, broken: str | None = "case_1") -> Path:
    """Three small NIfTI studies; ``broken`` is all zeros (its ``seg`` stage fails)."""
    for i, name in enumerate(("case_0", "case_1", "case_2")):
        write_nifti(folder / f"{name}.nii.gz", make_volume(i, zero=name == broken))
    return folder


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
