"""Run one DAG once with ``dag.test()`` (no scheduler, no workers) and print what happened as JSON.

For trying a medpipe DAG on a workstation before deploying it, and for the tests and
``benchmarks/engines.py``. With AIRFLOW_HOME set up (``airflow db migrate``) and
AIRFLOW__CORE__DAGS_FOLDER the folder holding DAG_FILE:

    .venv-airflow/bin/python workflows/airflow/dag_test.py DAG_FILE DAG_ID ['{"studies_dir": ...}']

The last stdout line is ``RESULT {...}``: the run's state, every task instance's state by
task id and map index, and the scheduling settings of each task (pool, slots, limits).
A DAG file that fails to import prints ``IMPORT_ERROR <message>`` instead.
"""

from __future__ import annotations

import importlib.util
import json
import sys


def main() -> int:
    path, dag_id = sys.argv[1], sys.argv[2]
    conf = json.loads(sys.argv[3]) if len(sys.argv) > 3 else None
    spec = importlib.util.spec_from_file_location("dag_under_test", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # what the dag processor would show as a broken DAG
        print(f"IMPORT_ERROR {type(exc).__name__}: {exc}")
        return 0
    dag = next(v for v in vars(module).values() if getattr(v, "dag_id", None) == dag_id)
    tasks = {t.task_id: {"pool": t.pool, "pool_slots": t.pool_slots, "retries": t.retries,
                         "max_active_tis_per_dagrun": t.max_active_tis_per_dagrun,
                         "upstream": sorted(t.upstream_task_ids)} for t in dag.tasks}
    run = dag.test(run_conf=conf)

    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    states: dict[str, dict[str, str]] = {}
    with create_session() as session:
        for ti in session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id,
                                                      TaskInstance.run_id == run.run_id):
            states.setdefault(ti.task_id, {})[str(ti.map_index)] = str(getattr(ti.state, "value", ti.state))
    print("RESULT " + json.dumps({"state": str(getattr(run.state, "value", run.state)), "states": states, "tasks": tasks}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
