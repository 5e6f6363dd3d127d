"""One thread count for torch/OpenMP, MKL and OpenBLAS, whatever the environment said."""

from __future__ import annotations

import os
import subprocess
import sys

from medpipe.threads import THREAD_VARIABLES, usable_cores

PROBE = """
import torch
from medpipe.threads import apply_threads
n = apply_threads({arg})
info = torch.__config__.parallel_info()
mkl = [l for l in info.splitlines() if 'mkl_get_max_threads' in l]
print(n, torch.get_num_threads(), mkl[0].split(':')[1].strip() if mkl else n)
"""


def _probe(arg: str, **env: str) -> list[int]:
    base = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    out = subprocess.run([sys.executable, "-c", PROBE.format(arg=arg)], env={**base, **env}, capture_output=True,
                         text=True, check=True).stdout.split()
    return [int(v) for v in out]


def test_a_stray_mkl_setting_is_overridden_by_the_one_count():
    # MKL_NUM_THREADS=1 left over in a user's shell, OpenMP at 2: both end at the same count
    want = min(2, usable_cores())
    assert _probe("", OMP_NUM_THREADS="2", MKL_NUM_THREADS="1") == [want, want, want]


def test_a_grant_is_capped_at_the_usable_cores():
    cores = usable_cores()
    assert _probe(str(cores + 7), MKL_NUM_THREADS="1") == [cores, cores, cores]
    assert _probe("1", OMP_NUM_THREADS=str(cores))[:2] == [1, 1]


STAGE_PROBE = """
import torch
from medpipe.threads import apply_threads, stage_threads
apply_threads(2)
with stage_threads(1) as n:
    inside = (n, torch.get_num_threads())
with stage_threads(64) as n:
    wide = (n, torch.get_num_threads())
print(*inside, *wide, torch.get_num_threads())
"""


def test_a_stage_runs_with_its_grant_capped_by_the_process_count():
    # what Snakemake/Airflow grant a 1-thread stage, medpipe run gives it too; the count comes back after
    base = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    out = subprocess.run([sys.executable, "-c", STAGE_PROBE], env=base, capture_output=True, text=True,
                         check=True).stdout.split()
    top = min(2, usable_cores())
    assert [int(v) for v in out] == [1, 1, top, top, top]
