"""Sliding-window inference: medpipe ``predict`` vs MONAI ``sliding_window_inference``.

One process, same STU-Net-S, same fitted weights, same 160^3 input, same patch, overlap
0.5, Gaussian blending:

  (a) MONAI fp32, called as users call it (mode="gaussian", overlap=0.5, sw_batch_size=1)
  (b) MONAI with bf16 autocast + channels-last
  (c) medpipe ``predict`` (precision="auto")

plus the measurements the precision policy is built on (conv peak per dtype/layout,
per-patch network time per policy, batch size, torch.compile), and peak memory of
a 105-class model on a 256^3 volume, each variant in its own subprocess.

Usage:
    .venv/bin/python benchmarks/sliding_window.py            # full run (~15 min on 2 cores)
    .venv/bin/python benchmarks/sliding_window.py --quick    # smaller, for a smoke test (not recorded)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._results import markdown_table, record  # noqa: E402
from medpipe.inference import predict  # noqa: E402
from medpipe.inference.optimize import optimize_for_inference  # noqa: E402
from medpipe.inference.precision import cpu_flags  # noqa: E402
from medpipe.models import create_model  # noqa: E402

THREADS = 2


def timed(fn, reps: int = 3) -> tuple[float, float]:
    """(best wall seconds, best process-CPU seconds) over ``reps`` runs after one warm-up."""
    fn()
    walls, cpus = [], []
    for _ in range(reps):
        c, t = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus)


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


# --------------------------------------------------------------------------- conv peak
def conv_peak(quick: bool) -> list[dict]:
    """A big 3x3x3 conv (128 -> 128 channels) in each dtype/layout: the machine's practical peak."""
    c, s = 128, (24 if quick else 32)
    flops = 2 * 27 * c * c * s**3
    rows = []
    conv = nn.Conv3d(c, c, 3, padding=1).eval()
    x = torch.randn(1, c, s, s, s)
    with torch.inference_mode():
        for cl in (False, True):
            m = copy.deepcopy(conv).to(memory_format=torch.channels_last_3d) if cl else conv
            xx = x.contiguous(memory_format=torch.channels_last_3d) if cl else x
            for bf16 in (False, True):
                with autocast(bf16):
                    wall, cpu = timed(lambda m=m, xx=xx: m(xx), reps=5)
                rows.append({"layout": "channels-last" if cl else "contiguous", "dtype": "bf16" if bf16 else "fp32",
                             "tflops_wall": flops / wall / 1e12, "tflops_cpu": flops / (cpu / THREADS) / 1e12})
    return rows


# --------------------------------------------------------------------------- FLOP count
def conv_flops(model: nn.Module, patch: tuple[int, int, int], in_ch: int = 1) -> int:
    """Multiply-add FLOPs (x2) of every Conv3d for one patch (hooks on a throwaway forward)."""
    total = 0

    def hook(m, inp, out):
        nonlocal total
        k = int(np.prod(m.kernel_size))
        total += 2 * (m.in_channels // m.groups) * k * out.shape[1] * int(np.prod(out.shape[2:])) * out.shape[0]

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv3d)]
    with torch.inference_mode():
        model(torch.zeros(1, in_ch, *patch))
    for h in hs:
        h.remove()
    return total


# --------------------------------------------------------------------------- per-patch policy table
def patch_policies(net: nn.Module, patch, quick: bool) -> list[dict]:
    x = torch.randn(1, 1, *patch)
    rows = []
    with torch.inference_mode():
        ref = net(x)
        for opt in (False, True):
            for cl in (False, True):
                for bf16 in (False, True):
                    m = copy.deepcopy(net)
                    m = optimize_for_inference(m) if opt else m
                    xx = x
                    if cl:
                        m = m.to(memory_format=torch.channels_last_3d)
                        xx = x.contiguous(memory_format=torch.channels_last_3d)
                    with autocast(bf16):
                        y = m(xx).float()
                        wall, cpu = timed(lambda m=m, xx=xx: m(xx), reps=1 if quick else 2)
                    rows.append({"rewrite": opt, "channels_last": cl, "bf16": bf16, "wall": wall, "cpu": cpu,
                                 "max_abs_err": float((y - ref).abs().max())})
        for bs in (1, 2):
            m = optimize_for_inference(copy.deepcopy(net))
            xb = torch.randn(bs, 1, *patch)
            wall, cpu = timed(lambda m=m, xb=xb: m(xb), reps=1 if quick else 2)
            rows.append({"batch": bs, "wall_per_patch": wall / bs, "cpu_per_patch": cpu / bs})
    return rows


def compile_check(quick: bool) -> dict:
    """torch.compile of the IN+LeakyReLU reference on CPU: compile time and steady-state gain."""
    from medpipe.kernels import instance_norm_leaky_relu_reference

    x = torch.randn(1, 32, 48, 48, 48) if not quick else torch.randn(1, 16, 32, 32, 32)
    w, b = torch.randn(x.shape[1]), torch.randn(x.shape[1])
    eager_wall, eager_cpu = timed(lambda: instance_norm_leaky_relu_reference(x, w, b), reps=5)
    t = time.perf_counter()
    fn = torch.compile(instance_norm_leaky_relu_reference, dynamic=False)
    with torch.inference_mode():
        fn(x, w, b)
    compile_s = time.perf_counter() - t
    with torch.inference_mode():
        comp_wall, comp_cpu = timed(lambda: fn(x, w, b), reps=5)
    return {"shape": list(x.shape), "eager_ms": eager_cpu * 1e3, "compiled_ms": comp_cpu * 1e3,
            "compile_s": compile_s}


# --------------------------------------------------------------------------- confident weights
def fitted_stunet_s(volume: np.ndarray, labels: np.ndarray, iters: int, crop: int = 64, seed: int = 0):
    """STU-Net-S fitted for a few Adam steps on phantom crops, so argmax is not a coin toss."""
    torch.manual_seed(seed)
    k = int(labels.max()) + 1
    net = create_model("stunet_s", in_channels=1, num_classes=k)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    net.train()
    losses = []
    for _ in range(iters):
        o = [int(rng.integers(0, s - crop + 1)) for s in volume.shape]
        sl = tuple(slice(a, a + crop) for a in o)
        x = torch.from_numpy(np.ascontiguousarray(volume[sl]))[None, None]
        y = torch.from_numpy(np.ascontiguousarray(labels[sl])).long()[None]
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return net.eval(), k, losses


def margin_stats(logits: torch.Tensor) -> float:
    """Fraction of voxels whose top-2 logit gap exceeds 0.5 (how 'decided' the model is)."""
    top2 = logits.topk(2, dim=0).values
    return float(((top2[0] - top2[1]) > 0.5).float().mean())


# --------------------------------------------------------------------------- memory children
def _vm_hwm() -> int:
    """Peak RSS of this process's address space (VmHWM). Not ``ru_maxrss``: on Linux that
    survives fork+exec, so a child would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def memory_child(variant: str, size: int, patch: int, classes: int) -> None:
    """Run one variant on a ``size``^3 volume with a ``classes``-class STU-Net-XS; print peak RSS."""
    import psutil

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    net = create_model("stunet_xs", in_channels=1, num_classes=classes).eval()
    x = torch.randn(1, 1, size, size, size)
    base = psutil.Process().memory_info().rss
    t = time.perf_counter()
    with torch.inference_mode():
        if variant.startswith("monai"):
            from monai.inferers import sliding_window_inference

            bf16 = variant == "monai_bf16"
            m = net.to(memory_format=torch.channels_last_3d) if bf16 else net

            def predictor(p):
                return m(p.contiguous(memory_format=torch.channels_last_3d) if bf16 else p)

            with autocast(bf16):
                out = sliding_window_inference(x, (patch,) * 3, 1, predictor, overlap=0.5, mode="gaussian")
            labels = out[0].argmax(0).to(torch.uint8).numpy()
        else:
            acc = "fp16" if variant == "medpipe_fp16acc" else "fp32"
            res = predict(net, x[0], (patch,) * 3, num_classes=classes, progress=False, accumulation=acc)
            labels = res.labels
    seconds = time.perf_counter() - t
    peak = _vm_hwm()
    print(json.dumps({"variant": variant, "peak_rss": peak, "baseline_rss": base, "seconds": seconds,
                      "labels_shape": list(labels.shape)}))


def run_memory(size: int, patch: int, classes: int) -> list[dict]:
    rows = []
    for variant in ("monai_fp32", "monai_bf16", "medpipe", "medpipe_fp16acc"):
        proc = subprocess.run([sys.executable, __file__, "--memory-child", variant, "--mem-size", str(size),
                               "--patch", str(patch), "--classes", str(classes)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            rows.append({"variant": variant, "error": proc.stderr.strip().splitlines()[-1][:200]})
        else:
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    return rows


# --------------------------------------------------------------------------- main comparison
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--patch", type=int, default=96)
    ap.add_argument("--fit-iters", type=int, default=30)
    ap.add_argument("--mem-size", type=int, default=256)
    ap.add_argument("--classes", type=int, default=105)
    ap.add_argument("--memory-child", default=None)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.mem_size, args.patch, args.classes)
        return
    if args.quick:
        args.size, args.patch, args.fit_iters, args.mem_size = 96, 64, 3, 96

    torch.set_num_threads(THREADS)
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    patch = (args.patch,) * 3
    print(f"threads={THREADS} load={load_before} flags: amx={'amx_bf16' in cpu_flags()} "
          f"avx512_bf16={'avx512_bf16' in cpu_flags()} capability={torch.backends.cpu.get_cpu_capability()}",
          flush=True)

    peak_rows = conv_peak(args.quick)
    print("conv peak", peak_rows, flush=True)
    comp = compile_check(args.quick)
    print("compile", comp, flush=True)

    from medpipe.data.phantoms import ct_phantom

    ct, seg = ct_phantom(shape=(args.size,) * 3, spacing=(1.5, 1.5, 1.5), seed=1)
    vol = ((np.clip(ct.array[0], -200, 300) - 50.0) / 80.0).astype(np.float32)
    lab = seg.array[0].astype(np.int64)
    t = time.perf_counter()
    net, k, losses = fitted_stunet_s(vol, lab, args.fit_iters, crop=min(64, args.size))
    fit_s = time.perf_counter() - t
    print(f"fitted STU-Net-S ({k} classes) in {fit_s:.0f}s, loss {losses[0]:.3f} -> {losses[-1]:.3f}", flush=True)

    policy_rows = patch_policies(net, patch, args.quick)
    for r in policy_rows:
        print("policy", r, flush=True)

    flops_patch = conv_flops(net, patch)
    batch = min((r for r in policy_rows if "batch" in r), key=lambda r: r["wall_per_patch"])["batch"]
    x = torch.from_numpy(vol)[None, None]

    # (a) MONAI fp32 as users call it
    from monai.inferers import sliding_window_inference

    def monai_run(bf16: bool):
        m = copy.deepcopy(net)
        if bf16:
            m = m.to(memory_format=torch.channels_last_3d)

        def predictor(p):
            return m(p.contiguous(memory_format=torch.channels_last_3d) if bf16 else p)

        with torch.inference_mode(), autocast(bf16):
            return sliding_window_inference(x, patch, 1, predictor, overlap=0.5, mode="gaussian")[0].float()

    variants = [
        ("monai_fp32", lambda: monai_run(False)),
        ("monai_bf16_cl", lambda: monai_run(True)),
        ("medpipe", lambda: predict(copy.deepcopy(net), vol[None], patch, num_classes=k, overlap=0.5,
                                    precision="auto", batch_size=batch, progress=False)),
    ]
    # Interleaved rounds (a, b, c, a, b, c): on a shared machine a variant can lose a core to
    # someone else's job for a whole run; the best round of each is the comparable figure.
    results: dict[str, dict] = {}
    for rnd in range(1 if args.quick else args.rounds):
        for name, fn in variants:
            c, t = time.process_time(), time.perf_counter()
            out = fn()
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            print(name, f"round {rnd}: wall {wall:.1f}s cpu {cpu:.1f}s load {os.getloadavg()}", flush=True)
            prev = results.get(name)
            rounds = (prev["rounds"] if prev else []) + [round(wall, 1)]
            if prev is None or wall < prev["wall"]:
                results[name] = {"wall": wall, "cpu": cpu, "out": out if prev is None else prev["out"],
                                 "load": os.getloadavg()[0]}
            results[name]["rounds"] = rounds
            del out

    ref_logits = results["monai_fp32"]["out"][0] if results["monai_fp32"]["out"].dim() == 5 else \
        results["monai_fp32"]["out"]
    ref = ref_logits.argmax(0).numpy()
    decided = margin_stats(ref_logits)
    b_lab = results["monai_bf16_cl"]["out"].argmax(0).numpy()
    c_res = results["medpipe"]["out"]
    tiles = c_res.facts["tiles"]
    agree_b = float((b_lab == ref).mean())
    agree_c = float((c_res.labels == ref).mean())
    fit_acc = float((ref == lab).mean())
    total_flops = flops_patch * tiles

    mem_rows = [] if args.skip_memory else run_memory(args.mem_size, args.patch, args.classes)
    load_after = os.getloadavg()
    print(f"total benchmark time {time.perf_counter() - t_start:.0f}s", flush=True)

    if args.quick:
        return
    write_results(args, peak_rows, comp, policy_rows, results, agree_b, agree_c, decided, fit_acc, fit_s, losses,
                  k, tiles, flops_patch, total_flops, mem_rows, load_before, load_after, c_res.facts)


def write_results(args, peak_rows, comp, policy_rows, results, agree_b, agree_c, decided, fit_acc, fit_s, losses,
                  k, tiles, flops_patch, total_flops, mem_rows, load_before, load_after, facts) -> None:
    best_bf16 = max(r["tflops_wall"] for r in peak_rows if r["dtype"] == "bf16")
    best_any = max(r["tflops_wall"] for r in peak_rows)
    a = results["monai_fp32"]
    rows = []
    best_bs = min((r for r in policy_rows if "batch" in r), key=lambda r: r["wall_per_patch"])["batch"]
    for name, label, agree in [("monai_fp32", "(a) MONAI fp32, mode=gaussian, sw_batch_size=1", 1.0),
                               ("monai_bf16_cl", "(b) MONAI + bf16 autocast + channels-last", agree_b),
                               ("medpipe", f"(c) medpipe predict (auto -> {facts['precision']})", agree_c)]:
        r = results[name]
        rows.append([label, f"{r['wall']:.1f}", f"{r['cpu']:.1f}", f"{a['wall'] / r['wall']:.2f}x",
                     f"{a['cpu'] / r['cpu']:.2f}x",
                     f"{results['monai_bf16_cl']['wall'] / r['wall']:.2f}x", f"{agree:.4f}",
                     f"{total_flops / r['wall'] / 1e12:.3f}", f"{r['load']:.1f}",
                     " / ".join(str(w) for w in r["rounds"])])
    main_table = markdown_table(["variant", "best wall s", "CPU s (that round)", "speed-up vs (a), wall",
                                 "vs (a), CPU", "vs (b), wall", "argmax agreement with (a)",
                                 "achieved TFLOP/s (wall)", "load avg after", "wall s per round"], rows)
    peak_table = markdown_table(["layout", "dtype", "TFLOP/s (wall)", "TFLOP/s (CPU time / 2 threads)"],
                                [[r["layout"], r["dtype"], f"{r['tflops_wall']:.3f}", f"{r['tflops_cpu']:.3f}"]
                                 for r in peak_rows])
    pol = [r for r in policy_rows if "rewrite" in r]
    base_cpu = next(r["cpu"] for r in pol if not r["rewrite"] and not r["channels_last"] and not r["bf16"])
    pol_table = markdown_table(
        ["1x1 GEMM + fused IN rewrite", "channels-last", "bf16 autocast", "wall s", "CPU s", "CPU vs eager fp32",
         "max |logit err| vs fp32"],
        [["yes" if r["rewrite"] else "no", "yes" if r["channels_last"] else "no", "yes" if r["bf16"] else "no",
          f"{r['wall']:.2f}", f"{r['cpu']:.2f}", f"{base_cpu / r['cpu']:.2f}x", f"{r['max_abs_err']:.1e}"]
         for r in pol])
    bs = [r for r in policy_rows if "batch" in r]
    bs_line = ", ".join(f"batch {r['batch']}: {r['wall_per_patch']:.2f} s wall / {r['cpu_per_patch']:.2f} s CPU "
                        "per patch" for r in bs)
    mem_table = ""
    if mem_rows:
        monai = next((r for r in mem_rows if r.get("variant") == "monai_fp32" and "peak_rss" in r), None)
        mrows = []
        for r in mem_rows:
            if "error" in r:
                mrows.append([r["variant"], "failed: " + r["error"], "", "", ""])
                continue
            ratio = f"{r['peak_rss'] / monai['peak_rss']:.0%}" if monai else "n/a"
            inc = (f"{(r['peak_rss'] - r['baseline_rss']) / (monai['peak_rss'] - monai['baseline_rss']):.0%}"
                   if monai else "n/a")
            mrows.append([r["variant"], f"{r['peak_rss'] / 2**30:.2f}", f"{(r['peak_rss'] - r['baseline_rss']) / 2**30:.2f}",
                          ratio, inc, f"{r['seconds']:.0f}"])
        mem_table = markdown_table(["variant", "peak RSS GiB", "peak minus baseline GiB", "vs MONAI fp32 (peak)",
                                    "vs MONAI fp32 (increment)", "seconds"], mrows)
    body = f"""
Network: **STU-Net-S** (medpipe.models `stunet_s`, 1 input channel, {k} classes), weights fitted for
{len(losses)} Adam steps (lr 1e-3, 64^3 crops, {fit_s:.0f} s) on a {args.size}^3 CT phantom so predictions are
decided (cross-entropy {losses[0]:.2f} -> {losses[-1]:.2f}; fp32 argmax matches the phantom labels on
{fit_acc:.1%} of voxels; top-2 logit gap > 0.5 on {decided:.1%} of voxels). Random weights would make
argmax agreement meaningless (near-tied logits flip under any rounding); scaling the last layer would not
help (the rounding error scales with it). Input {args.size}^3, patch {args.patch}^3, overlap 0.5, Gaussian
blending (sigma = patch/8), {tiles} tiles, no TTA. {THREADS} torch threads. Conv FLOPs per patch
{flops_patch / 1e9:.1f} GFLOP (hooks on every Conv3d), {total_flops / 1e12:.2f} TFLOP per volume.

The machine is shared with other engineers: load average {load_before[0]:.1f} at the start and
{load_after[0]:.1f} at the end on 2 cores. A variant can lose one of the two cores to another job for
a whole run (then its CPU time is close to its wall time instead of twice it, and idle OpenMP threads
spin, inflating CPU time too), so the three variants run in {args.rounds} interleaved rounds and the
best wall time of each is compared; all rounds are listed.

{main_table}

medpipe facts: precision `{facts['precision']}` ({facts['precision_reason']}), channels-last
{facts['channels_last']}, batch size {facts['batch_size']}, streamed stitching with slab depth
{facts['slab_depth']}, engine memory bound {facts['peak_memory_bound_bytes'] / 2**20:.0f} MiB (dense buffer
would be {facts['dense_buffer_bytes'] / 2**20:.0f} MiB).

**Convolution peak** (3x3x3 conv, 128 -> 128 channels; best of 5). bf16 peak {best_bf16:.3f} TFLOP/s,
best of all {best_any:.3f} TFLOP/s. No AMX is exposed to this VM (no `amx_*` flags), so oneDNN runs bf16
through AVX512-BF16 (`brg_conv_fwd:avx512_core_bf16`):

{peak_table}

**Per-patch network time by policy** ({args.patch}^3, one patch, STU-Net-S; this table is what the `auto`
precision policy and the inference rewrite are based on):

{pol_table}

Batch size (rewritten fp32 network): {bs_line}; medpipe (c) ran with batch size {best_bs}, the faster one.

**torch.compile on CPU** for the IN+LeakyReLU op at {comp['shape']}: eager {comp['eager_ms']:.1f} ms CPU,
compiled {comp['compiled_ms']:.1f} ms CPU, compile {comp['compile_s']:.0f} s. Whole STU-Net-S at 64^3
(measured separately while building this): compiled forward 0.45 s vs eager 0.92 s, but 120 s to compile on
this loaded 2-core machine, more than a whole 160^3 volume takes eagerly, so the CPU dispatch does not compile.

**Peak memory, {args.classes}-class STU-Net-XS on a {args.mem_size}^3 volume** (patch {args.patch}^3, overlap 0.5;
XS keeps the runs short — the network's activations are small, so the difference is the stitching; each variant
in its own subprocess, peak = `VmHWM` of the child (not `ru_maxrss`, which survives fork+exec), baseline = RSS after building the model and input):

{mem_table}
"""
    record("sliding_window", "Sliding-window inference: medpipe vs MONAI (CPU)", body,
           command=".venv/bin/python benchmarks/sliding_window.py")


if __name__ == "__main__":
    main()
