"""Training memory of the reversible MBConv U-Net vs its non-reversible twin (same weights).

    python benchmarks/reversible_memory.py                 # revunet_s, 4 MR channels, records RESULTS.md
    python benchmarks/reversible_memory.py --quick         # small crops, prints only

Every measurement is one training step (forward, deep-supervision loss, backward, SGD step)
in a fresh subprocess, interleaved reversible/twin per crop: its peak resident memory
(``ru_maxrss``) minus the resident memory after building the model is the step's working
memory; the bytes autograd saved for backward (``saved_tensors_hooks``) are the activation
memory. The largest crop under a memory cap comes from a straight-line fit of working memory
against voxels (activation memory is linear in the crop), verified by running that crop.
Goals (issue 15): >= 3x less activation memory; >= 3x the crop volume under the same cap.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import markdown_table, record  # noqa: E402


def child(model: str, crop: list[int], reversible: bool, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    from medpipe.models import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = create_model(model, in_channels=4, num_classes=4, deep_supervision=True).train()
    net.set_reversible(reversible)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(1, 4, *crop)
    y = torch.randint(0, 4, (1, *crop))
    base = _rss_now()
    saved = 0

    def pack(t):
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outs = net(x)
    loss = sum(F.cross_entropy(o, F.interpolate(y[:, None].float(), size=o.shape[2:]).long()[:, 0]) for o in outs)
    loss.backward()
    opt.step()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak": peak, "base": base, "work": peak - base, "saved": saved, "seconds": seconds}


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_child(model: str, crop: list[int], reversible: bool, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", model, ",".join(map(str, crop)), str(int(reversible)), str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fit(points: list[tuple[int, int]]) -> tuple[float, float]:
    n = len(points)
    mx = sum(v for v, _ in points) / n
    my = sum(m for _, m in points) / n
    sxx = sum((v - mx) ** 2 for v, _ in points)
    slope = sum((v - mx) * (m - my) for v, m in points) / sxx
    return slope, my - slope * mx


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, model, crop, rev, threads = sys.argv
        print(json.dumps(child(model, [int(c) for c in crop.split(",")], rev == "1", int(threads))))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="revunet_s")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cap-gib", type=float, default=3.0, help="memory cap for the largest-crop comparison")
    a = p.parse_args(argv)
    crops = [[64, 64, 32], [64, 64, 64]] if a.quick else [[64, 64, 32], [64, 64, 64], [96, 96, 64]]
    load = os.getloadavg()
    rows, fits = [], {True: [], False: []}
    results = {}
    for crop in crops:
        for rev in (True, False):
            r = run_child(a.model, crop, rev, a.threads)
            results[(tuple(crop), rev)] = r
            if "error" not in r:
                fits[rev].append((math.prod(crop), r["work"]))
            print(crop, "reversible" if rev else "twin", r, flush=True)
    gib = 2**30
    for crop in crops:
        rv, tw = results[(tuple(crop), True)], results[(tuple(crop), False)]
        if "error" in rv or "error" in tw:
            rows.append(["x".join(map(str, crop)), rv.get("error", ""), tw.get("error", ""), "", "", "", "", ""])
            continue
        rows.append(["x".join(map(str, crop)), f"{rv['saved'] / gib:.3f}", f"{tw['saved'] / gib:.3f}",
                     f"{tw['saved'] / rv['saved']:.1f}x", f"{rv['work'] / gib:.2f}", f"{tw['work'] / gib:.2f}",
                     f"{tw['work'] / rv['work']:.1f}x", f"{rv['seconds']:.1f} / {tw['seconds']:.1f}"])
    cap = a.cap_gib * gib
    largest = {}
    for rev in (True, False):
        slope, icpt = _fit(fits[rev])
        vox = (cap - icpt) / slope
        side = int((vox ** (1 / 3)) // 32 * 32)  # cubes divisible by the 5 pools
        largest[rev] = {"voxels": vox, "cube": side, "slope": slope}
    verify = {rev: run_child(a.model, [largest[rev]["cube"]] * 3, rev, a.threads) for rev in (True, False)
              if largest[rev]["cube"] >= 32 and not a.quick}
    load_after = os.getloadavg()
    table = markdown_table(["crop", "saved activations rev (GiB)", "twin (GiB)", "ratio", "step working memory rev (GiB)",
                            "twin (GiB)", "ratio", "s/step rev / twin"], rows)
    ratio_act = [r for r in rows if r[3]]
    v_ratio = largest[True]["voxels"] / largest[False]["voxels"]
    ver = "; ".join(f"{'reversible' if rev else 'twin'} at {largest[rev]['cube']}^3: "
                    + (f"{r['work'] / gib:.2f} GiB working memory" if "error" not in r else r["error"])
                    for rev, r in verify.items())
    body = (f"`{a.model}` (4 MR channels, 4 classes, deep supervision, instance norm), batch 1, one SGD step per fresh "
            f"process, {a.threads} thread(s); load average before/after {load[0]:.2f}/{load_after[0]:.2f} (shared "
            "machine: times are upper bounds, memory is not affected).\n\n"
            f"{table}\n\n"
            f"- working memory grows {largest[False]['slope'] / largest[True]['slope']:.1f}x faster per voxel for the twin "
            f"({largest[True]['slope'] * 1e6 / 2**20:.1f} vs {largest[False]['slope'] * 1e6 / 2**20:.1f} MiB per million voxels)\n"
            f"- largest crop under a {a.cap_gib:.1f} GiB cap (linear fit): reversible {largest[True]['voxels'] / 1e6:.2f} M voxels, "
            f"twin {largest[False]['voxels'] / 1e6:.2f} M voxels: **{v_ratio:.1f}x the volume**"
            + (f"; verified: {ver}" if ver else "") + "\n"
            f"- goals: >= 3x less activation memory: {'met' if ratio_act and all(float(r[3][:-1]) >= 3 for r in ratio_act) else 'not met'}; "
            f">= 3x the crop volume under the same cap: {'met' if v_ratio >= 3 else 'not met'}\n")
    if not a.quick:
        record("reversible_memory", "Reversible MBConv U-Net: training memory vs the non-reversible twin", body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
