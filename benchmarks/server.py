"""Server benchmark: 10 concurrent ct_organs jobs through ``medpipe serve`` vs ``medpipe run``.

Writes 10 phantom CT studies (NIfTI, 96x84x32 at 4 mm: the whole body in-plane, different
seeds), then, in one script run so the machine's load affects both alike, in the order
A B B A:

- A: ``medpipe run ct_organs STUDIES -o RUNS --jobs W`` (the reference: the same runner, no HTTP);
- B: one ``medpipe serve --workers W``; all 10 studies are uploaded at once from 10 client
  threads (the Slicer module's own client), each polled every second until done, results
  downloaded. Twice, so the server's memory after 10 and after 20 jobs can be compared.

Checks: every job done and none lost (10 ids, 10 results); each server label map equals the
direct run's voxel for voxel; mean Dice against the phantom's ground truth. Measures: wall
time for the 10 and per job, and the server process's RSS (sampled every 0.2 s; the jobs
run in child processes, whose peak RSS comes from their run.json).

Run: python benchmarks/server.py [--studies 10] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "helpers"))
sys.path.insert(0, str(ROOT / "workflows" / "slicer" / "MedPipe"))

from benchmarks._results import markdown_table, record  # noqa: E402


def _studies(folder: Path, n: int) -> dict[str, Path]:
    from medpipe.data.phantoms import ct_phantom
    from medpipe.io.volumes import write_volume

    out = {}
    for i in range(n):
        ct, labels = ct_phantom((96, 84, 32), (4.0, 4.0, 4.0), seed=100 + i, vary=True)
        out[f"case_{i:02d}"] = write_volume(ct, folder / "studies" / f"case_{i:02d}.nii.gz")
        write_volume(labels, folder / "truth" / f"case_{i:02d}.nii.gz")
    return out


def _labels(path: Path) -> np.ndarray:
    from medpipe.io.volumes import read_volume

    return read_volume(path, is_label=True).array[0]


def _mean_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    from medpipe.metrics import dice

    values = [dice(pred == v, truth == v) for v in np.unique(truth) if v != 0]
    return float(np.nanmean(values))


def _direct(tmp: Path, out: str, workers: int, env: dict) -> tuple[float, list[float]]:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "medpipe", "run", "ct_organs", str(tmp / "studies"), "-o", str(tmp / out),
                    "--jobs", str(workers)], check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    runs = [json.loads(p.read_text())["duration_s"] for p in sorted((tmp / out).glob("*/run.json"))]
    return wall, runs


def _through_server(srv, proc, studies: dict[str, Path], out: Path) -> dict:
    """All studies uploaded at once from one thread each; returns what the round measured."""
    from medpipe_slicer import MedPipeClient

    client = MedPipeClient(srv.url, srv.token, timeout=120)
    jobs: dict[str, dict] = {}
    errors: list[str] = []
    turnaround: dict[str, float] = {}

    def one(name: str, path: Path) -> None:
        try:
            t = time.perf_counter()
            job = client.submit("ct_organs", path)
            jobs[name] = client.wait(job["id"], poll_s=1.0, timeout=3600)
            turnaround[name] = time.perf_counter() - t
            client.download(job["id"], out / f"{name}.nii.gz", fmt="nifti")
        except Exception as exc:  # counted as lost below
            errors.append(f"{name}: {exc}")

    cpu0 = sum(proc.cpu_times()[:2])
    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=item) for item in studies.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    runs = [json.loads((srv.state / "jobs" / j["id"] / "run" / j["study"] / "run.json").read_text())
            for j in jobs.values()]
    return {"wall": wall, "jobs": jobs, "errors": errors, "turnaround": list(turnaround.values()),
            "runs": [r["duration_s"] for r in runs], "child_peak": max((r.get("peak_rss_mb") or 0) for r in runs),
            "server_cpu": sum(proc.cpu_times()[:2]) - cpu0, "listed": len(client.jobs())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=10)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()

    import psutil
    from services import MedpipeServer, subprocess_env

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="medpipe-server-bench-") as tmp:
        tmp = Path(tmp)
        studies = _studies(tmp, args.studies)
        env = subprocess_env()
        srv = MedpipeServer(tmp / "state", tmp / "no-extra-pipelines", workers=args.workers, max_upload_mb=64,
                            extra=["--pipeline", "ct_organs"], stage_module=None).start()
        try:
            proc = psutil.Process(srv.proc.pid)
            rss: list[float] = []
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    rss.append(proc.memory_info().rss / 2**20)
                    time.sleep(0.2)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            time.sleep(1.0)
            baseline = max(rss)
            # A B B A: the reference, the server twice, the reference again, so load drift hits both alike
            print("round 1: medpipe run", flush=True)
            d1 = _direct(tmp, "direct1", args.workers, env)
            print("round 2: server", flush=True)
            s1 = _through_server(srv, proc, studies, tmp / "server1")
            rss_after_1 = rss[-1]
            print("round 3: server", flush=True)
            s2 = _through_server(srv, proc, studies, tmp / "server2")
            rss_after_2 = rss[-1]
            print("round 4: medpipe run", flush=True)
            d2 = _direct(tmp, "direct2", args.workers, env)
            stop.set()
            sampler.join()
        finally:
            srv.stop()

        direct_file = {n: next((tmp / "direct1" / n / "artifacts" / "write").rglob("*.nii.gz")) for n in studies}
        checks = []
        for rnd, res in (("server1", s1), ("server2", s2)):
            done = [n for n, j in res["jobs"].items() if j["state"] == "done"]
            same = sum(np.array_equal(_labels(tmp / rnd / f"{n}.nii.gz"), _labels(direct_file[n])) for n in done)
            checks.append((len(done), same))
        dice = [_mean_dice(_labels(direct_file[n]), _labels(tmp / "truth" / f"{n}.nii.gz")) for n in studies]
    load_after = os.getloadavg()

    n = len(studies)
    dw, sw = (d1[0] + d2[0]) / 2, (s1["wall"] + s2["wall"]) / 2
    rows = [
        ["`medpipe run --jobs W` (reference)", f"{d1[0]:.1f} / {d2[0]:.1f}", f"{dw / n:.1f}",
         f"{np.median(d1[1] + d2[1]):.1f}", "—"],
        [f"`medpipe serve --workers W`, {n} concurrent uploads", f"{s1['wall']:.1f} / {s2['wall']:.1f}",
         f"{sw / n:.1f}", f"{np.median(s1['runs'] + s2['runs']):.1f}",
         f"{np.median(s1['turnaround'] + s2['turnaround']):.1f}"],
    ]
    lost = [2 * n - checks[0][0] - checks[1][0], s1["errors"] + s2["errors"]]
    body = (
        f"W = {args.workers}; {n} phantom CT studies (96x84x32 at 4 mm: the whole body in-plane, 128 mm of it "
        "along z; NIfTI, different seeds), pipeline ct_organs (bundle ct_organs_phantom). Order: reference, "
        f"server, server, reference. Load average before {load_before[0]:.1f}, after {load_after[0]:.1f} "
        "(2 shared cores: timings are upper bounds).\n\n"
        + markdown_table(["path", f"wall for {n}, round 1 / 2 (s)", "wall per job (s)",
                          "median runner time per job (s)", "median submit-to-done (s)"], rows)
        + f"\n\n- jobs done: {checks[0][0]}/{n} and {checks[1][0]}/{n}; lost or failed: {lost[0]} "
        f"({'; '.join(lost[1]) or 'none'}); GET /jobs lists {s2['listed']}\n"
        f"- server label maps identical to `medpipe run`'s, voxel for voxel: {checks[0][1]}/{checks[0][0]} and "
        f"{checks[1][1]}/{checks[1][0]}\n"
        f"- mean Dice of these label maps vs the phantoms' ground truth: {np.mean(dice):.3f} (min {np.min(dice):.3f})\n"
        f"- server process RSS: {baseline:.0f} MiB after start, {rss_after_1:.0f} after the first {n} jobs, "
        f"{rss_after_2:.0f} after the next {n}, peak {max(rss):.0f}; CPU it used: {s1['server_cpu']:.1f} s and "
        f"{s2['server_cpu']:.1f} s per round (uploads, checks, {n} clients polling every second)\n"
        f"- each job runs in its own process (peak RSS {max(s1['child_peak'], s2['child_peak']):.0f} MiB); the "
        "runner time excludes starting that process, submit-to-done includes the queue wait\n"
    )
    print(body)
    record("server", "Server: 10 concurrent jobs through medpipe serve vs medpipe run", body)


if __name__ == "__main__":
    main()
