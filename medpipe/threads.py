"""One thread count for every numeric library a stage uses.

PyTorch's convolutions follow OpenMP's thread count, its matrix products MKL's, and a
stray ``MKL_NUM_THREADS`` in a user's environment splits the two. A different thread count
is a different blocking of the same sums, so a study run under ``medpipe run`` and the same
study run stage by stage under Snakemake (whose ``medpipe stage`` takes the scheduler's
grant) came out a few voxels apart. Every process that runs stages sets the count here,
from one number, so a result depends on that number only (equal grants, equal bytes)."""

from __future__ import annotations

import os
import sys

__all__ = ["THREAD_VARIABLES", "apply_threads", "usable_cores"]

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
    n = max(1, min(int(threads or usable_cores()), usable_cores()))
    for var in THREAD_VARIABLES:
        os.environ[var] = str(n)  # read by the libraries a stage imports later
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)  # OpenMP and MKL, already loaded
    return n
