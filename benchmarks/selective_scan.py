"""Selective scan forward+backward on CPU: medpipe's scan vs the sequential reference, a plain
loop, and mambapy's Blelloch parallel scan (PyPI, pure PyTorch), interleaved in one process.

    python benchmarks/selective_scan.py            # L = 64 ... 32,768, records RESULTS.md
    python benchmarks/selective_scan.py --quick    # L <= 4,096, prints only

The reference (the published recurrence, step-indexed; autograd backward) is quadratic in L
in backward, so it runs up to ``--reference-max`` (default 8,192) only. mambapy's pscan pads
L to a power of two. Triton is timed when a CUDA device is present. Goal (issue 15): >= 5x
the reference for L >= 4,096, and time linear in L.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import markdown_table, record  # noqa: E402

from medpipe.kernels.selective_scan import selective_scan  # noqa: E402


def _inputs(length: int, dim: int, n: int, device: str = "cpu"):
    g = torch.Generator().manual_seed(length)
    u = torch.randn(1, dim, length, generator=g)
    delta = torch.randn(1, dim, length, generator=g) * 0.5
    a = -torch.rand(dim, n, generator=g) * 2 - 0.1
    b, c = torch.randn(1, n, length, generator=g), torch.randn(1, n, length, generator=g)
    d, z, bias = torch.randn(dim, generator=g), torch.randn(1, dim, length, generator=g), torch.randn(dim, generator=g)
    return [t.to(device).requires_grad_() for t in (u, delta, a, b, c, d, z, bias)]


def _ours(backend):
    def run(xs):
        out = selective_scan(*xs[:7], delta_bias=xs[7], delta_softplus=True, backend=backend)
        out.sum().backward()
    return run


def _mambapy(xs):
    """The same maths through mambapy's pscan (layout (B, L, D, N), as mambapy.mamba does)."""
    from mambapy.pscan import pscan

    u, delta, a, b, c, d, z, bias = xs
    dl = torch.nn.functional.softplus(delta + bias[:, None]).transpose(1, 2)  # (B, L, D)
    ul = u.transpose(1, 2)
    da = torch.exp(dl.unsqueeze(-1) * a)  # (B, L, D, N)
    bx = dl.unsqueeze(-1) * b.transpose(1, 2).unsqueeze(2) * ul.unsqueeze(-1)
    hs = pscan(da, bx)
    y = (hs @ c.transpose(1, 2).unsqueeze(-1)).squeeze(3) + d * ul
    out = y * torch.nn.functional.silu(z.transpose(1, 2))
    out.sum().backward()


def _time(fn, xs, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        for x in xs:
            x.grad = None
        t0 = time.perf_counter()
        fn(xs)
        if xs[0].is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--dim", type=int, default=64, help="d_inner")
    p.add_argument("--state", type=int, default=16, help="d_state")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reference-max", type=int, default=8192)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    lengths = [64, 256, 1024, 4096] + ([] if a.quick else [8192, 16384, 32768])
    load = os.getloadavg()
    rows = []
    for length in lengths:
        xs = _inputs(length, a.dim, a.state)
        reps = 3 if length <= 4096 else 1
        t = {"cpu": _time(_ours("cpu"), xs, reps), "loop": _time(_ours("loop"), xs, reps),
             "mambapy": _time(_mambapy, xs, reps)}
        t["reference"] = _time(_ours("reference"), xs, 1) if length <= a.reference_max else None
        if torch.cuda.is_available():
            t["triton"] = _time(_ours("triton"), _inputs(length, a.dim, a.state, "cuda"), reps)
        rows.append((length, t))
        ref = f"{t['reference']:.3f}" if t["reference"] is not None else "-"
        print(f"L={length:6d} ours {t['cpu']:.4f} s  loop {t['loop']:.3f} s  mambapy {t['mambapy']:.3f} s  "
              f"reference {ref} s", flush=True)
    load_after = os.getloadavg()

    def fmt(v):
        return "-" if v is None else f"{v:.4f}"

    table = markdown_table(
        ["L", "medpipe CPU scan (s)", "plain loop (s)", "mambapy pscan (s)", "reference (s)",
         "speed-up vs reference", "vs loop", "vs mambapy", "ours s per 1k tokens"],
        [[f"{L:,}", fmt(t["cpu"]), fmt(t["loop"]), fmt(t["mambapy"]), fmt(t["reference"]),
          f"{t['reference'] / t['cpu']:.0f}x" if t["reference"] else "-", f"{t['loop'] / t['cpu']:.1f}x",
          f"{t['mambapy'] / t['cpu']:.1f}x", f"{1000 * t['cpu'] / L:.4f}"] for L, t in rows])
    long_rows = [(L, t) for L, t in rows if L >= 4096 and t["reference"]]
    goal = all(t["reference"] / t["cpu"] >= 5 for _, t in long_rows) if long_rows else None
    per_tok = [t["cpu"] / L for L, t in rows if L >= 1024]
    growth = max(per_tok) / min(per_tok) if per_tok else float("nan")
    body = (f"Forward + backward of the full selective scan (softplus(delta + bias), D skip, SiLU(z) gate), batch 1, "
            f"d_inner {a.dim}, d_state {a.state}, {a.threads} threads, best of 3 runs (1 for L > 4,096); all "
            f"implementations interleaved per length in one process. Load average before/after: "
            f"{load[0]:.2f}/{load_after[0]:.2f} (other agents share the 2 cores: times are upper bounds).\n\n"
            f"{table}\n\n"
            f"- goal >= 5x the reference for L >= 4,096: {'met' if goal else 'not met' if goal is not None else 'n/a'} "
            f"(the reference is quadratic in backward; it is run up to L = {a.reference_max:,})\n"
            f"- linear growth: time per token varies {growth:.2f}x between L = 1,024 and {lengths[-1]:,} "
            "(1.0 = exactly linear)\n")
    if not a.quick:
        record("selective_scan", "Selective scan on CPU: medpipe vs reference vs mambapy", body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
