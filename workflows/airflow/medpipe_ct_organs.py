"""The shipped ``ct_organs`` pipeline as an Airflow DAG (``medpipe_ct_organs``).

Copy this file and ``medpipe_airflow.py`` into the DAGs folder, then either set the
Airflow Variables once::

    airflow variables set medpipe_ct_organs_studies_dir /data/incoming
    airflow variables set medpipe_ct_organs_out /data/runs

or trigger with ``conf`` ({"studies_dir": ..., "out": ...}), which wins over them. The
medpipe command the workers run comes from ``$MEDPIPE_COMMAND`` (default ``medpipe``);
``MEDPIPE_DEVICE=cuda`` sends the GPU stages to the ``medpipe_gpu`` pool.
"""

from __future__ import annotations

import os

from medpipe_airflow import medpipe_dag

dag = medpipe_dag(
    "ct_organs",
    dag_id="medpipe_ct_organs",
    device=os.environ.get("MEDPIPE_DEVICE", "cpu"),
    pool=os.environ.get("MEDPIPE_POOL") or None,
)
