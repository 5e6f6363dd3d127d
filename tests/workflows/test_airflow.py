"""Airflow 3, run for real: ``airflow db migrate`` on SQLite in a temp AIRFLOW_HOME, then ``dag.test()``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from workflow_helpers import (
    AIRFLOW_DIR,
    ENGINE_PIPELINE,
    artifact_hashes,
    engine_env,
    engine_tool,
    make_studies,
    run,
)

from medpipe.pipeline import load_pipeline, run_studies
from medpipe.pipeline.discover import discover_studies

DRIVER = AIRFLOW_DIR / "dag_test.py"

DAG_FILE = """\
import sys
sys.path.insert(0, {airflow_dir!r})
from medpipe_airflow import medpipe_dag

dag = medpipe_dag({pipeline!r}, {studies!r}, {out!r}, dag_id={dag_id!r}, memory_mb=2000, retries=2)
"""


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    python = engine_tool("airflow")
    home = tmp_path_factory.mktemp("airflow")
    (home / "dags").mkdir()
    proc = run([str(python.parent / "airflow"), "db", "migrate"], home, airflow_env(home))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return home


def airflow_env(home: Path) -> dict[str, str]:
    return engine_env(AIRFLOW_HOME=str(home), AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
                      AIRFLOW__CORE__LOAD_EXAMPLES="False")


def run_dag(home: Path, dag_file: Path, dag_id: str, conf: dict | None = None) -> tuple[dict, str]:
    """(result, the engine's log: everything dag.test() printed)."""
    cmd = [str(engine_tool("airflow")), str(DRIVER), str(dag_file), dag_id]
    proc = run(cmd + ([json.dumps(conf)] if conf else []), home, airflow_env(home), timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    last = [ln for ln in proc.stdout.splitlines() if ln.startswith(("RESULT ", "IMPORT_ERROR "))][-1]
    if last.startswith("IMPORT_ERROR "):
        return {"import_error": last.removeprefix("IMPORT_ERROR ")}, log
    return json.loads(last.removeprefix("RESULT ")), log


def write_dag(home: Path, dag_id: str, pipeline: Path, studies: Path, out: Path) -> Path:
    f = home / "dags" / f"{dag_id}.py"
    f.write_text(DAG_FILE.format(airflow_dir=str(AIRFLOW_DIR), pipeline=str(pipeline), studies=str(studies),
                                 out=str(out), dag_id=dag_id))
    return f


def test_dag_over_three_studies_one_broken(airflow_home: Path, tmp_path: Path) -> None:
    pipe = tmp_path / "engine_test.yaml"
    pipe.write_text(ENGINE_PIPELINE)
    studies = make_studies(tmp_path / "studies")
    out = tmp_path / "af"
    dag_file = write_dag(airflow_home, "engine_test", pipe, studies, out)
    result, log = run_dag(airflow_home, dag_file, "engine_test")
    states = result["states"]
    assert result["state"] == "failed"  # one study failed; the run says so
    assert states["list_studies"] == {"-1": "success"}
    for task in ("load", "scale", "hold"):
        assert states[f"study.{task}"] == {"0": "success", "1": "success", "2": "success"}, task
    assert states["study.seg"] == {"0": "success", "1": "failed", "2": "success"}
    assert states["study.count"] == {"0": "success", "1": "upstream_failed", "2": "success"}
    assert "stage 'seg' failed on study 'case_1': unexpected error (ValueError: image is all zeros)" in log
    # scheduling settings come from the stage resources (scale: threads 2, 500 MB of a 2000 MB budget)
    tasks = result["tasks"]
    assert tasks["study.scale"]["pool_slots"] == 2 and tasks["study.scale"]["max_active_tis_per_dagrun"] == 4
    assert tasks["study.load"]["pool_slots"] == 1 and tasks["study.load"]["max_active_tis_per_dagrun"] == 2
    assert tasks["study.seg"]["retries"] == 2 and tasks["study.count"]["upstream"] == ["list_studies", "study.scale", "study.seg"]
    # the failed stage published nothing; the run folders are those of medpipe run, byte for byte
    assert not (out / "case_1" / "artifacts" / "seg").exists()
    ref = tmp_path / "ref"
    run_studies(load_pipeline(pipe), discover_studies(studies), ref)
    for name in ("case_0", "case_1", "case_2"):
        assert artifact_hashes(out / name) == artifact_hashes(ref / name), name
    rec = json.loads((out / "case_0" / "run.json").read_text())
    assert rec["status"] == "done" and rec["outputs"] == {"count.table": ["artifacts/count/table.json"]}


def test_unschedulable_pipeline_is_a_broken_dag_and_an_empty_folder_fails_listing(
    airflow_home: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(ENGINE_PIPELINE.replace("outputs: [count.table]\n", "")
                   + "  blob: {kind: t_memory_only, inputs: {image: load.image}}\n")
    studies = make_studies(tmp_path / "studies", broken=None)
    result, _ = run_dag(airflow_home, write_dag(airflow_home, "bad_dag", bad, studies, tmp_path / "o1"), "bad_dag")
    assert "stage 'blob' (t_memory_only) cannot run under a workflow engine" in result["import_error"]
    (airflow_home / "dags" / "bad_dag.py").unlink()

    pipe = tmp_path / "engine_test.yaml"
    pipe.write_text(ENGINE_PIPELINE)
    empty = tmp_path / "empty"
    empty.mkdir()
    dag_file = write_dag(airflow_home, "empty_dag", pipe, empty, tmp_path / "o2")
    result, log = run_dag(airflow_home, dag_file, "empty_dag")
    assert result["state"] == "failed" and result["states"]["list_studies"] == {"-1": "failed"}
    assert f"medpipe plan found no studies: input folder {empty} holds no DICOM files" in log
    assert not (tmp_path / "o2").exists()


def test_without_airflow_the_factory_names_the_pip_install() -> None:
    import importlib
    import sys

    if importlib.util.find_spec("airflow") is not None:
        pytest.skip("Airflow is installed in this environment")
    sys.path.insert(0, str(AIRFLOW_DIR))
    try:
        with pytest.raises(ImportError, match=r"need Airflow 3: pip install 'apache-airflow>=3,<4'"):
            importlib.import_module("medpipe_airflow")
    finally:
        sys.path.remove(str(AIRFLOW_DIR))
