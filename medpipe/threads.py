"""One thread count for every numeric library a stage uses.

PyTorch's convolutions follow OpenMP's thread count, its matrix products MKL's, and a
stray ``MKL_NUM_THREADS`` in a user's environment splits the two. A different thread count
is a different blocking of the same sums, so a study run under ``medpipe run`` and the same
study run stage by stage under Snakemake (whose ``medpipe stage`` takes the scheduler's
grant) came out a few voxels apart. Every process that runs stages sets the count here,
from one number, so a result depends on that number only (equal grants, equal bytes).

Inside a process each stage then runs with what a scheduler would grant it: its declared
``resources.threads``, capped by the process's count (``stage_threads``). Snakemake and Airflow
grant exactly that per job, so ``medpipe run`` computes every stage with the thread count the
engines do (a reconstruction with 2 threads under one engine and 1 under another differed in
the last bits of its floats, and the segmentation of it in a few voxels)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["THREAD_VARIABLES", "apply_threads", "stage_threads", "usable_cores"]

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a SLURM or cgroup allotment)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def apply_threads(threads: int | None = None) -> int:
    """Set OpenMP, MKL, OpenBLAS (and PyTorch, when loaded) to ``threads``, or to
    ``OMP_NUM_THREADS`` / the usable cores when not given; never more than the usable cores.
    OpenVINO reads the same number through ``torch.get_num_threads()``. Returns the count."""
    if threads is None:
        try:
            threads = int(os.environ.get("OMP_NUM_THREADS", "") or 0) or None
        except ValueError:
            threads = None
    global _BUDGET
    n = max(1, min(int(threads or usable_cores()), usable_cores()))
    _set(n)
    _BUDGET = n
    return n


_BUDGET: int | None = None  # the process's count, set by apply_threads


def _set(n: int) -> None:
    for var in THREAD_VARIABLES:
        os.environ[var] = str(n)  # read by the libraries a stage imports later
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)  # OpenMP and MKL, already loaded


@contextmanager
def stage_threads(requested: int) -> Iterator[int]:
    """Run a stage with ``min(requested, the process's count)`` threads, then restore the count."""
    budget = _BUDGET if _BUDGET is not None else apply_threads()
    n = max(1, min(int(requested), budget))
    _set(n)
    try:
        yield n
    finally:
        _set(budget)
