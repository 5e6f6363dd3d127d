"""The shipped ``mri_brain`` pipeline (k-space -> CIRIM -> segmentation -> atlas) as an Airflow DAG
(``medpipe_mri_brain``).

Copy this file and ``medpipe_airflow.py`` into the DAGs folder, then either set the Airflow
Variables once::

    airflow variables set medpipe_mri_brain_studies_dir /data/kspace
    airflow variables set medpipe_mri_brain_out /data/runs

or trigger with ``conf`` ({"studies_dir": ..., "out": ...}), which wins over them. Each study is
one k-space HDF5 file; a broken one fails its own tasks and no other study's.
"""

from __future__ import annotations

import os

from medpipe_airflow import medpipe_dag

dag = medpipe_dag(
    "mri_brain",
    dag_id="medpipe_mri_brain",
    device=os.environ.get("MEDPIPE_DEVICE", "cpu"),
    pool=os.environ.get("MEDPIPE_POOL") or None,
)
