"""MRI reconstruction benchmark: zero-filled, SENSE, sigpy L1-wavelet CS, BART pics, RIM and CIRIM
on the same held-out 8-coil 256x256 brain slices, in one run.

The data are ``make recon-data``'s: k-space simulated from the Colin27 brain (never seen in
training) for the test, the ITK T1 head for validation. For every slice and mask (equispaced and
random, 4x and 8x, fastMRI centre fractions) all methods run interleaved on the same k-space, so
a loaded machine slows them alike. CS and BART regularisation weights are tuned on the validation
slices first (by SSIM, per acceleration). Times are seconds per slice *including coil maps*
(ESPIRiT for sigpy CS, BART's ecalib for BART, the ACS estimate for SENSE and the networks).
SSIM/PSNR/NMSE are fastMRI's (``medpipe.metrics``; data range = volume maximum, whole image);
``SSIM fg`` is the same SSIM inside the head (reference > 10 % of its maximum, dilated), shown
because whole-image SSIM also scores the noise-only background.

    python benchmarks/recon.py --test build/kspace/test --val build/kspace/val \
        --cirim medpipe/bundles/mri_brain_cirim --rim build/bundles/rim_brain --slices 6
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._results import load_phrase, markdown_table, record  # noqa: E402


def _fg_ssim(ref: np.ndarray, x: np.ndarray) -> float:
    from scipy import ndimage

    from medpipe.metrics import ssim

    vals = []
    for r, p in zip(ref, x, strict=True):
        m = ndimage.binary_dilation(r > 0.1 * ref.max(), iterations=3)
        rows, cols = np.where(m.any(1))[0], np.where(m.any(0))[0]
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        vals.append(ssim(r[box][None], p[box][None], data_range=float(ref.max())))
    return float(np.mean(vals))


def _load(folder: str):
    from medpipe.training.recon import KSpaceSlices

    return KSpaceSlices(folder)


def _tune(val, kind: str, acc: float, method: str, grid: list[float], slices: list[int]) -> tuple[float, dict]:
    from medpipe.io.kspace import center_crop
    from medpipe.metrics import ssim
    from medpipe.recon.coilmaps import espirit_maps
    from medpipe.recon.masks import make_mask
    from medpipe.recon.reconstruct import reconstruct_slice

    scores: dict[float, list[float]] = {lam: [] for lam in grid}
    for i in slices:
        k, ref = val.slice(i)
        m = make_mask(kind, k.shape[1:], acc, seed=5000 + i)
        y = k * m
        maps = espirit_maps(y, m) if method == "cs" else None
        for lam in grid:
            x = np.abs(center_crop(reconstruct_slice(y, m, method, lam=lam, maps=maps), ref.shape))
            scores[lam].append(ssim(ref, x, data_range=float(ref.max())))
    best = max(grid, key=lambda lam: float(np.mean(scores[lam])))
    return best, {lam: round(float(np.mean(v)), 4) for lam, v in scores.items()}


def main(argv: list[str] | None = None) -> int:
    import torch

    from medpipe.metrics import nmse, psnr, ssim
    from medpipe.pipeline.stages.recon import load_recon_model
    from medpipe.recon.coilmaps import acs_maps, espirit_maps
    from medpipe.recon.masks import make_mask
    from medpipe.recon.reconstruct import bart_available, reconstruct_slice

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--test", default="build/kspace/test")
    ap.add_argument("--val", default="build/kspace/val")
    ap.add_argument("--cirim", default="medpipe/bundles/mri_brain_cirim")
    ap.add_argument("--rim", default="build/bundles/rim_brain")
    ap.add_argument("--slices", type=int, default=6)
    ap.add_argument("--val-slices", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-load", default="", help="the load average while the bundles trained, for the record")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    test, val = _load(args.test), _load(args.val)
    cirim, cirim_bundle = load_recon_model(args.cirim, test.coils)
    rim, rim_bundle = load_recon_model(args.rim, test.coils) if Path(args.rim).exists() else (None, None)
    use_bart = bart_available()
    pick = np.linspace(0, len(test) - 1, args.slices).round().astype(int).tolist()
    vpick = np.linspace(0, len(val) - 1, args.val_slices).round().astype(int).tolist()
    lams: dict[tuple[str, float], float] = {}
    tuning_rows = []
    for acc in (4.0, 8.0):
        for method, grid in (("cs", [0.001, 0.003, 0.01]), ("bart", [0.002, 0.005, 0.01])):
            if method == "bart" and not use_bart:
                continue
            best, table = _tune(val, "equispaced", acc, method, grid, vpick)
            lams[(method, acc)] = best
            tuning_rows.append([method, f"{acc:g}x", best, ", ".join(f"{k:g}: {v}" for k, v in table.items())])
            print("tuned", method, acc, best, table, flush=True)

    methods = ["zero_filled", "sense", "cs"] + (["bart"] if use_bart else []) + (["rim"] if rim else []) + ["cirim"]
    results: dict[tuple[str, float], dict[str, dict]] = {}
    examples = {}
    for kind in ("equispaced", "random"):
        for acc in (4.0, 8.0):
            recon = {m: [] for m in methods}
            secs = {m: [] for m in methods}
            refs = []
            for i in pick:
                k, ref = test.slice(i)
                mask = make_mask(kind, k.shape[1:], acc, seed=9000 + i)
                y = k * mask
                refs.append(ref)
                for m in methods:
                    t0 = time.perf_counter()
                    if m == "zero_filled":
                        x = reconstruct_slice(y, mask, "rss")
                    elif m == "sense":
                        x = reconstruct_slice(y, mask, "sense", maps=acs_maps(y, mask))
                    elif m == "cs":
                        x = reconstruct_slice(y, mask, "cs", lam=lams[("cs", acc)], maps=espirit_maps(y, mask))
                    elif m == "bart":
                        x = reconstruct_slice(y, mask, "bart", lam=lams[("bart", acc)])
                    else:
                        x = reconstruct_slice(y, mask, "cirim", model=cirim if m == "cirim" else rim,
                                              maps=acs_maps(y, mask))
                    secs[m].append(time.perf_counter() - t0)
                    recon[m].append(np.abs(x).astype(np.float32))
                print(kind, acc, i, {m: round(secs[m][-1], 2) for m in methods}, flush=True)
            ref = np.stack(refs)
            results[(kind, acc)] = {}
            for m in methods:
                vol = np.stack(recon[m])
                results[(kind, acc)][m] = {"ssim": ssim(ref, vol), "ssim_fg": _fg_ssim(ref, vol), "psnr": psnr(ref, vol),
                                           "nmse": nmse(ref, vol), "sec": float(np.median(secs[m]))}
            if kind == "equispaced":
                examples[acc] = ({m: np.stack(recon[m])[len(pick) // 2] for m in methods}, ref[len(pick) // 2])
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    body = _report(results, methods, lams, tuning_rows, load_before, load_after, cirim_bundle, rim_bundle, pick,
                   args)
    print(body)
    _figure(examples, Path(__file__).with_name("recon.png"))
    if not args.no_record:
        record("recon", "MRI reconstruction: zero-filled, SENSE, CS (sigpy, BART), RIM, CIRIM", body)
    return 0


def _report(results, methods, lams, tuning_rows, load_before, load_after, cirim_bundle, rim_bundle, pick, args) -> str:
    rows = []
    for (kind, acc), res in results.items():
        for m in methods:
            r = res[m]
            rows.append([f"{kind} {acc:g}x", m, f"{r['ssim']:.4f}", f"{r['ssim_fg']:.4f}", f"{r['psnr']:.2f}",
                         f"{r['nmse']:.4f}", f"{r['sec']:.2f}"])
    goals = []
    for (kind, acc), res in results.items():
        cs_names = [m for m in ("cs", "bart") if m in res]
        best = max(cs_names, key=lambda m: res[m]["ssim"])
        c = res["cirim"]
        margin = c["ssim"] - res[best]["ssim"]
        ratio = c["sec"] / res[best]["sec"]
        ratio_sigpy = c["sec"] / res["cs"]["sec"]
        line = (f"- {kind} {acc:g}x: CIRIM SSIM {c['ssim']:.4f} vs best CS ({best}) {res[best]['ssim']:.4f}: "
                f"margin {margin:+.4f} (goal >= +0.03: {'met' if margin >= 0.03 else 'MISSED'}); time "
                f"{ratio:.2f}x of {best} (goal <= 0.33: {'met' if ratio <= 1 / 3 else 'MISSED'}), "
                f"{ratio_sigpy:.2f}x of sigpy CS")
        if "rim" in res:
            line += f"; CIRIM - RIM SSIM {c['ssim'] - res['rim']['ssim']:+.4f} ({'met' if c['ssim'] >= res['rim']['ssim'] else 'MISSED'})"
        line += (f". Inside the head: CIRIM SSIM fg {c['ssim_fg']:.4f} vs {best} {res[best]['ssim_fg']:.4f} "
                 f"({c['ssim_fg'] - res[best]['ssim_fg']:+.4f}), PSNR {c['psnr'] - res[best]['psnr']:+.2f} dB")
        goals.append(line)
    try:
        bart_version = subprocess.run(["bart", "version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        bart_version = "not installed"
    arch = cirim_bundle.config.arch_config
    tr = cirim_bundle.config.training or {}
    text = [
        f"- CIRIM bundle training (`make train-recon-bundle`): {tr.get('iterations')} of {tr.get('planned_iterations')} "
        f"planned iterations in {float(tr.get('seconds', 0)) / 60:.1f} min on {tr.get('threads')} threads "
        f"(time box {tr.get('max_minutes', 45)} min); load average when it ran: {args.train_load or 'not recorded'}",
        f"- data: held-out Colin27 k-space ({len(pick)} slices of `{args.test}`, 8 coils, 256x256, SNR 40), "
        f"validation ITK T1 head ({args.val_slices} slices of `{args.val}`)",
        f"- CIRIM: `{args.cirim}` ({cirim_bundle.config.architecture} {arch}); RIM: "
        f"`{args.rim}` ({rim_bundle.config.architecture if rim_bundle else 'absent'} "
        f"{rim_bundle.config.arch_config if rim_bundle else ''}), both trained by `medpipe train-recon` with the same "
        "recipe and time box",
        f"- BART: {bart_version}; sigpy L1WaveletRecon db4, 100 iterations; SENSE = sigpy SenseRecon 30 iterations",
        f"- threads: {args.threads}; {load_phrase(float(load_before[0]), float(load_after[0]))}; every method ran "
        "interleaved on the same slices",
        "",
        "Regularisation tuned on the validation slices (equispaced masks, SSIM):",
        "",
        markdown_table(["method", "acceleration", "chosen", "SSIM per lambda"], tuning_rows),
        "",
        markdown_table(["mask", "method", "SSIM", "SSIM fg", "PSNR dB", "NMSE", "s / slice"], rows),
        "",
        "Goals (issue 13):",
        "",
        *goals,
        "",
        "![reconstructions](recon.png)",
    ]
    return "\n".join(text)


def _figure(examples, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    accs = sorted(examples)
    methods = list(next(iter(examples.values()))[0])
    fig, axes = plt.subplots(len(accs), len(methods) + 1, figsize=(2.6 * (len(methods) + 1), 2.8 * len(accs)),
                             facecolor="black", squeeze=False)
    for r, acc in enumerate(accs):
        recs, ref = examples[acc]
        vmax = float(np.percentile(ref, 99.5))
        for c, name in enumerate([*methods, "reference"]):
            ax = axes[r, c]
            ax.imshow(ref if name == "reference" else recs[name], cmap="gray", vmin=0, vmax=vmax)
            ax.set_title(f"{name} {acc:g}x" if name != "reference" else "reference", color="white", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=80, facecolor="black")
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
