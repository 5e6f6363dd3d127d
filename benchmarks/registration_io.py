"""What the registration speed-ups and the instance-optimisation choice are worth, on the
registration benchmark's own held-out pairs (``benchmarks/registration.py``), in one run.

* the network: torch vs OpenVINO fp32 vs OpenVINO bf16 — seconds of one forward pass on each
  pair's working grid (best of 3, after a warm-up that compiles), and the largest velocity
  difference from torch;
* instance optimisation: none; the earlier variant (loss on half-resolution images, lr 0.1,
  40 steps: the row recorded before); the loss on the full-resolution images (lr 0.2) at 5, 10
  and 20 steps — Dice, endpoint error, folding and seconds.

    python benchmarks/registration_io.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import load_phrase, markdown_table, record  # noqa: E402
from registration import _pairs, _score  # noqa: E402

VARIANTS = [("no instance optimisation", 0, {}),
            ("half-resolution loss, lr 0.1, 40 steps", 40, {"loss_resolution": "half", "lr": 0.1}),
            ("full-resolution loss, lr 0.2, 5 steps", 5, {}),
            ("full-resolution loss, lr 0.2, 10 steps", 10, {}),
            ("full-resolution loss, lr 0.2, 20 steps", 20, {})]


def _network_rows(pairs, bundle: str) -> list[list[str]]:
    import torch

    from medpipe.registration.deep import _forward, to_working_grid, working_grid
    from medpipe.registration.register import _network

    b, settings, net = _network(bundle, "micdir", "cpu")
    spacing = float(b.config.preprocessing.spacing[0])
    times: dict[str, list[float]] = {}
    diffs: dict[str, list[float]] = {}
    for p in pairs:
        aff, shape = working_grid(p["fixed"], spacing, tuple(settings.grid))
        f = torch.from_numpy(to_working_grid(p["fixed"], aff, shape))[None, None]
        m = torch.from_numpy(to_working_grid(p["moving"], aff, shape))[None, None]
        ref = None
        for name, engine, precision in (("torch fp32", "torch", "fp32"), ("OpenVINO fp32", "openvino", "fp32"),
                                        ("OpenVINO bf16", "openvino", "bf16")):
            out, _ = _forward(net, f, m, engine, precision)  # warm-up (compiles for this shape)
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                out, _ = _forward(net, f, m, engine, precision)
                best = min(best, time.perf_counter() - t0)
            ref = out if ref is None else ref
            times.setdefault(name, []).append(best)
            diffs.setdefault(name, []).append(float((out - ref).abs().max()))
    base = float(np.mean(times["torch fp32"]))
    return [[name, f"{np.mean(t):.2f}", f"{base / np.mean(t):.1f}x", f"{max(diffs[name]):.1e}"]
            for name, t in times.items()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--micdir", default="brain_micdir")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()

    import SimpleITK as sitk
    import torch

    from medpipe.registration.register import register

    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    load_before = os.getloadavg()
    pairs = _pairs(2, 2.0, seed=2026)  # the registration benchmark's pairs (same seed)
    net_rows = _network_rows(pairs, args.micdir)
    scores: dict[str, list[dict]] = {}
    for pair in pairs:
        for name, steps, opts in VARIANTS:
            res = register(pair["fixed"], pair["moving"], "micdir", bundle=args.micdir, refine_iterations=steps,
                           refine_options=opts, warp=False)
            s = _score(pair, res.field, res.total_seconds)
            s["refine_s"] = res.facts["refine_s"]
            scores.setdefault(name, []).append(s | {"real": "true" not in pair})
            print(f"{pair['name']:<28} {name:<40} Dice {s['dice']:.3f} {res.total_seconds:.1f} s", flush=True)
    load_after = os.getloadavg()

    def agg(name, key, real):
        vals = [s[key] for s in scores[name] if s["real"] == real and key in s]
        return float(np.mean(vals))

    io_rows = [[name, f"{agg(name, 'dice', True):.3f}", f"{agg(name, 'dice', False):.3f}",
                f"{agg(name, 'epe_mm', False):.2f}",
                f"{np.mean([s['folding_pct'] for s in scores[name]]):.5f}",
                f"{np.mean([s['refine_s'] for s in scores[name]]):.1f}",
                f"{np.mean([s['seconds'] for s in scores[name]]):.1f}"] for name, _, _ in VARIANTS]
    text = ("The registration benchmark's pairs (2 real Colin27 <-> MNI152, 2 synthetic warps of Colin27), the "
            f"shipped `{args.micdir}`, {args.threads} thread(s); {load_phrase(load_before[0], load_after[0])}.\n\n"
            "The network, one forward pass on each pair's working grid (mean of the per-pair best of 3):\n\n"
            + markdown_table(["engine", "s / pass", "vs torch", "largest velocity difference (voxels)"], net_rows)
            + "\n\nInstance optimisation of the MICDIR answer (OpenVINO fp32 network):\n\n"
            + markdown_table(["variant", "real Dice", "synthetic Dice", "synthetic EPE mm", "folding %",
                              "refine s", "s / pair"], io_rows) + "\n")
    print(text)
    if not args.no_record:
        record("registration_io", "Registration: network engines and instance-optimisation variants", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
