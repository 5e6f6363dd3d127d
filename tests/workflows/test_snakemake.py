"""Snakemake 9, run for real (CLI, local executor) on the generic Snakefile."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from workflow_helpers import (
    BLOCK_MARKER_ENV,
    ENGINE_PIPELINE,
    PROFILES,
    SNAKEFILE,
    artifact_hashes,
    engine_env,
    engine_tool,
    make_studies,
    medpipe_command,
    run,
)

from medpipe.pipeline import load_pipeline, run_studies
from medpipe.pipeline.discover import discover_studies


def _snakemake(pipeline: Path | str, studies: Path, out: Path, *extra: str, profile: str = "local",
               cores: int | None = 2, config: tuple[str, ...] = ()) -> list[str]:
    return [str(engine_tool("snakemake")), "-s", str(SNAKEFILE), "--profile", str(PROFILES / profile),
            *(["--cores", str(cores)] if cores else []), *extra, "--config", f"pipeline={pipeline}", f"studies={studies}", f"out={out}",
            f"medpipe={medpipe_command()}", *config]


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    pipe = tmp_path / "engine_test.yaml"
    pipe.write_text(ENGINE_PIPELINE)
    return pipe, make_studies(tmp_path / "studies")


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def test_three_studies_one_broken_match_medpipe_run(tmp_path: Path, setup: tuple[Path, Path]) -> None:
    pipe, studies = setup
    out = tmp_path / "sm"
    proc = run(_snakemake(pipe, studies, out), tmp_path, engine_env())
    assert proc.returncode != 0  # one study failed; keep-going let the others finish
    for good in ("case_0", "case_2"):
        rec = _record(out / good)
        assert rec["status"] == "done", rec
        assert set(rec["stages"]) == {"load", "scale", "hold", "seg", "count"}
        assert rec["outputs"] == {"count.table": ["artifacts/count/table.json"]}
    broken = out / "case_1"
    log = (broken / "logs" / "snakemake" / "seg.log").read_text()
    assert "stage 'seg' failed on study 'case_1'" in log and "image is all zeros" in log
    rec = _record(broken)
    assert rec["status"] == "failed" and rec["error"]["stage"] == "seg"
    # nothing half-written: the failed stage and what depends on it were never published
    assert sorted(p.name for p in (broken / "artifacts").iterdir()) == ["hold", "input", "load", "scale"]
    assert "Error in rule seg" in proc.stdout + proc.stderr
    # the same pipeline through medpipe run gives the same artifacts, byte for byte
    ref = tmp_path / "ref"
    results = run_studies(load_pipeline(pipe), discover_studies(studies), ref)
    assert [r.status for r in results] == ["done", "failed", "done"]
    for name in ("case_0", "case_1", "case_2"):
        assert artifact_hashes(out / name) == artifact_hashes(ref / name), name
    # unchanged input: a second Snakemake run has nothing to do for the good studies
    again = run(_snakemake(pipe, studies, out, "-n"), tmp_path, engine_env())
    assert "study=case_1" in again.stdout and "study=case_0" not in again.stdout and "study=case_2" not in again.stdout


def test_killed_run_resumes_without_redoing_finished_stages(tmp_path: Path, setup: tuple[Path, Path]) -> None:
    pipe, studies = setup
    out = tmp_path / "sm"
    marker = tmp_path / "hold.marker"
    marker.write_text("hold")
    env = engine_env(**{BLOCK_MARKER_ENV: str(marker)})
    cmd = _snakemake(pipe, studies, out, cores=1)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("*/artifacts/.hold.tmp-*")) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert list(out.glob("*/artifacts/.hold.tmp-*")), "the hold stage never started"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and its running medpipe stage, at once
        proc.wait()
    held = [p.parents[1].name for p in out.glob("*/artifacts/.hold.tmp-*")]
    assert len(held) == 1 and not (out / held[0] / "artifacts" / "hold").exists()  # nothing half-published
    finished = {f: f.stat().st_mtime_ns for f in out.glob("*/artifacts/*/_record.json")}
    assert finished  # load and scale of at least the held study
    marker.unlink()
    unlock = run(_snakemake(pipe, studies, out, "--unlock"), tmp_path, env)
    assert unlock.returncode == 0, unlock.stderr
    resumed = run(_snakemake(pipe, studies, out, "--rerun-incomplete", cores=1), tmp_path, env)
    assert resumed.returncode != 0  # case_1 still fails at seg
    assert all(f.stat().st_mtime_ns == t for f, t in finished.items())  # finished stages were not redone
    assert _record(out / held[0])["stages"]["hold"]["status"] == "done"
    for good in ("case_0", "case_2"):
        assert _record(out / good)["status"] == "done"
    assert not list(out.glob("*/artifacts/.*.tmp-*"))  # the killed stage's temp folder was cleaned


def test_unschedulable_pipeline_and_empty_folder_are_refused_with_one_sentence(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(ENGINE_PIPELINE.replace("outputs: [count.table]\n", "")
                   + "  blob: {kind: t_memory_only, inputs: {image: load.image}}\n")
    studies = make_studies(tmp_path / "studies", broken=None)
    proc = run(_snakemake(bad, studies, tmp_path / "out", "-n"), tmp_path, engine_env())
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "stage 'blob' (t_memory_only) cannot run under a workflow engine" in text and "no file form" in text
    empty = tmp_path / "empty"
    empty.mkdir()
    pipe = tmp_path / "engine_test.yaml"
    pipe.write_text(ENGINE_PIPELINE)
    proc = run(_snakemake(pipe, empty, tmp_path / "out", "-n"), tmp_path, engine_env())
    assert proc.returncode != 0
    assert f"input folder {empty} holds no DICOM files, image files or study folders" in proc.stdout + proc.stderr
    assert not (tmp_path / "out").exists()


def test_slurm_profile_asks_for_the_stage_resources(tmp_path: Path) -> None:
    studies = make_studies(tmp_path / "studies", broken=None)
    proc = run(_snakemake("ct_organs", studies, tmp_path / "out", "-n", "--executor", "slurm", profile="slurm",
                          cores=8, config=("device=cuda",)), tmp_path, engine_env())
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-3000:]
    jobs = {block.split("\n", 1)[0].strip(": "): block for block in text.split("\nrule ")[1:]}
    seg = jobs["segment"]
    assert "threads: 4" in seg and "mem_mb=8000" in seg and "gpu=1" in seg and "slurm_partition=gpu" in seg
    assert "runtime=120" in seg
    load = jobs["load"]
    assert "mem_mb=4000" in load and "gpu=" not in load and "slurm_partition=cpu" in load
    assert text.count("\nrule segment:") == 3  # one job per study
