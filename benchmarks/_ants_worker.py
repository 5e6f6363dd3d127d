"""ANTs SyN worker for benchmarks/registration.py, run with a Python that has antspyx.

antspyx pins numpy < 2.4 and scipy < 1.16, older than medpipe's, so it lives in its own
environment (``make bench-registration-deps`` builds build/ants-venv). The benchmark starts
this worker once and sends it one JSON line per pair on stdin; the worker answers one JSON
line: the seconds ``ants.registration`` took (measured here, imports excluded) and the path
of the composed (affine + SyN) displacement field on the fixed grid.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> int:
    import ants

    for line in sys.stdin:
        job = json.loads(line)
        fixed, moving = ants.image_read(job["fixed"]), ants.image_read(job["moving"])
        t0 = time.perf_counter()
        reg = ants.registration(fixed, moving, type_of_transform=job.get("transform", "SyN"),
                                random_seed=int(job.get("seed", 1)))
        seconds = time.perf_counter() - t0
        field = ants.apply_transforms(fixed, moving, reg["fwdtransforms"], compose=job["out_prefix"])
        print(json.dumps({"seconds": seconds, "field": field, "transforms": reg["fwdtransforms"]}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
