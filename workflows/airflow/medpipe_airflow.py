"""Airflow 3 DAGs for medpipe pipelines: ``medpipe_dag(pipeline, studies_dir, out)``.

One DAG per pipeline file. At run time ``list_studies`` discovers the studies exactly as
``medpipe run`` does; a task group with one task per stage is then mapped over them with
``.expand()``, so every stage is its own mapped task: study *i*'s ``segment`` waits only
for study *i*'s ``load``, a failed study stops only its own downstream tasks, and
retries, pools and concurrency limits apply per stage. Each task instance is one
``medpipe stage`` process (atomic publish, run.json, cache), so ``OUT/<study>/`` ends
identical to a ``medpipe run``.

From the stage resources (``medpipe plan``): ``pool_slots`` = the stage's threads (size the
pool to the worker's cores), GPU stages of a ``device="cuda"`` DAG go to ``gpu_pool`` with
one slot, and ``max_active_tis_per_dagrun`` = how many copies fit in ``memory_mb``.

This file needs Airflow only (``pip install 'apache-airflow>=3,<4'``), not medpipe: it
talks to medpipe through its command line (``MEDPIPE_COMMAND``, default ``medpipe``),
which is how the two live in separate environments (their pins clash) or on separate
machines. Put it in the DAGs folder beside the DAG files that use it.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Sequence
from typing import Any

try:
    import pendulum
    from airflow.sdk import DAG, Param, Variable, task, task_group
    from airflow.sdk.exceptions import AirflowException, AirflowFailException
except ImportError as _exc:  # pragma: no cover - exercised only without Airflow
    raise ImportError(
        "medpipe's Airflow DAGs need Airflow 3: pip install 'apache-airflow>=3,<4' (or make airflow-venv)"
    ) from _exc

__all__ = ["medpipe_dag", "medpipe_command"]


def medpipe_command(medpipe: str | Sequence[str] | None = None) -> list[str]:
    """The medpipe command line: the argument, else ``$MEDPIPE_COMMAND``, else ``medpipe``."""
    if medpipe is None:
        medpipe = os.environ.get("MEDPIPE_COMMAND", "medpipe")
    return shlex.split(medpipe) if isinstance(medpipe, str) else list(medpipe)


def _medpipe(cmd: list[str], args: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([*cmd, *args], capture_output=True, text=True, check=False)
    except OSError as exc:
        raise AirflowException(f"medpipe: cannot start {' '.join(cmd)!r} ({exc}); set MEDPIPE_COMMAND") from None


def _last_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    line = (errors or lines or [f"exit code {proc.returncode}"])[-1]
    return line.removeprefix("error: ")


def _plan(cmd: list[str], pipeline: str, extra: list[str], studies: str | None = None) -> dict[str, Any]:
    args = ["plan", pipeline, "--json", *extra] + (["--studies", studies] if studies else [])
    proc = _medpipe(cmd, args)
    if proc.returncode != 0:
        what = "found no studies" if studies and "holds no" in proc.stderr else "refused the pipeline"
        raise AirflowFailException(f"medpipe plan {what}: {_last_error(proc)}")
    return json.loads(proc.stdout)


def _physical_memory_mb() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20)
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 16000


def medpipe_dag(
    pipeline: str,
    studies_dir: str | None = None,
    out: str | None = None,
    *,
    dag_id: str | None = None,
    medpipe: str | Sequence[str] | None = None,
    device: str = "cpu",
    overrides: Sequence[str] = (),
    targets: Sequence[str] = (),
    pool: str | None = None,
    gpu_pool: str = "medpipe_gpu",
    memory_mb: int | None = None,
    retries: int = 1,
    variable_prefix: str | None = None,
    schedule: Any = None,
    **dag_kwargs: Any,
) -> DAG:
    """A DAG running ``pipeline`` on every study of a folder, one mapped task per stage.

    ``studies_dir`` and ``out`` are the defaults of the DAG params of the same names; a run
    triggered with ``conf`` may change them, and an empty value is read from the Airflow
    Variable ``<variable_prefix>studies_dir`` / ``<variable_prefix>out`` (prefix default
    ``<dag_id>_``). ``retries`` covers lost workers and killed processes; a stage that
    medpipe itself failed (bad study, refused input) is not retried: the answer would be
    the same.
    """
    cmd = medpipe_command(medpipe)
    shared = ["--device", device, *(f"--set={o}" for o in overrides), *(f"--target={t}" for t in targets)]
    plan = _plan(cmd, pipeline, shared)  # parse time: the stages; the studies come at run time
    pipeline_file = plan["pipeline"]["file"]
    dag_id = dag_id or f"medpipe_{plan['pipeline']['name']}"
    prefix = f"{dag_id}_" if variable_prefix is None else variable_prefix
    memory = memory_mb or _physical_memory_mb()
    dag_kwargs.setdefault("start_date", pendulum.datetime(2026, 1, 1, tz="UTC"))
    dag_kwargs.setdefault("catchup", False)
    dag_kwargs.setdefault("tags", ["medpipe"])
    params = {
        "studies_dir": Param(studies_dir or "", type="string", description="a study or a folder of studies"),
        "out": Param(out or "", type="string", description="output folder; each study gets OUT/<study>/"),
    }

    def setting(context: dict[str, Any], name: str) -> str:
        value = str(context["params"].get(name) or "")
        if not value:
            value = str(Variable.get(f"{prefix}{name}", default="") or "")
        if not value:
            raise AirflowFailException(f"medpipe: no {name}: trigger with conf {{'{name}': ...}} or set the "
                                       f"Airflow Variable {prefix}{name}")
        return value

    with DAG(dag_id=dag_id, schedule=schedule, params=params,
             doc_md=f"medpipe pipeline `{plan['pipeline']['name']}` ({pipeline_file}), one task per stage, "
                    "mapped over the studies of `studies_dir`.", **dag_kwargs) as dag:

        @task(task_id="list_studies")
        def list_studies(**context: Any) -> list[dict[str, str]]:
            studies, out_dir = setting(context, "studies_dir"), setting(context, "out")
            found = _plan(cmd, pipeline_file, shared, studies)["studies"]
            print(f"medpipe: {len(found)} studies in {studies}: {', '.join(s['name'] for s in found)}")
            return [{**s, "run_dir": os.path.join(out_dir, s["name"])} for s in found]

        @task
        def run_stage(study: dict[str, str], stage: str, threads: int) -> str:
            args = ["stage", pipeline_file, stage, "--study", study["path"], "--run-dir", study["run_dir"],
                    "--threads", str(threads), *shared]
            print(f"medpipe: stage {stage} of study {study['name']}: {shlex.join([*cmd, *args])}")
            proc = _medpipe(cmd, args)
            for text in (proc.stdout, proc.stderr):
                if text.strip():
                    print(text.rstrip())
            if proc.returncode in (1, 2):  # medpipe's own verdict, one sentence naming study and stage
                raise AirflowFailException(_last_error(proc))
            if proc.returncode != 0:  # killed (OOM, lost node): worth a retry
                raise AirflowException(f"medpipe stage {stage} of study {study['name']} ended with "
                                       f"{_exit_reason(proc.returncode)}")
            return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""

        @task_group(group_id="study")
        def per_study(study: dict[str, str]) -> None:
            tasks: dict[str, Any] = {}
            for st in plan["stages"]:
                res = st["resources"]
                gpu = bool(res["gpu"])
                op = run_stage.override(
                    task_id=st["job"],
                    pool=gpu_pool if gpu else pool,
                    pool_slots=1 if gpu else res["threads"],
                    max_active_tis_per_dagrun=max(1, memory // max(1, res["mem_mb"])),
                    retries=retries,
                )(study=study, stage=st["name"], threads=res["threads"])
                for need in st["needs"]:
                    tasks[need] >> op
                tasks[st["name"]] = op

        per_study.expand(study=list_studies())
    return dag


def _exit_reason(code: int) -> str:
    if code < 0:
        import signal

        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
