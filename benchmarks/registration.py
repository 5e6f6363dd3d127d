"""Deformable registration head to head: affine, SimpleITK demons, ANTs SyN, VoxelMorph-style, MICDIR.

One run, the same held-out pairs, methods interleaved per pair so machine load hits all alike:

* real brains — Colin27 (Debian mricron-data, never seen in training) and the MNI152 2009a
  template (nilearn's wheel), both directions, at 2 mm, scored on grey/white-matter labels
  (MNI152: its probability maps > 0.5; Colin27: 3-class k-means of its T1);
* synthetic warps with known truth — Colin27 warped by random diffeomorphisms (plus
  same-modality intensity changes), scored on the same labels and on endpoint error.

Per pair and method: Dice and HD95 (mm) of the propagated labels (Learn2Reg: labels present
in both), % voxels with a non-positive Jacobian and SDlogJ (Learn2Reg's definition, with its
"+3"), and seconds per pair (resampling, affine pre-alignment and the deformable part; the
final image/label warp is excluded for every method alike). Every method gets the same
thread count. ANTs runs in its own environment through ``_ants_worker.py``.

    python benchmarks/registration.py --threads 1 --synthetic 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import load_phrase, markdown_table, record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ANTS_PY = ROOT / "build" / "ants-venv" / "bin" / "python"


def _pairs(n_synthetic: int, amplitude: float, seed: int):
    import torch

    from medpipe.data.brains import colin27, mni152
    from medpipe.data.deformations import augment_intensity, normalize_intensity, random_displacement
    from medpipe.registration import spatial
    from medpipe.registration.field import DisplacementField

    mni, mni_lab = mni152(2.0)
    col, col_lab = colin27(2.0)
    pairs = [{"name": "Colin27 -> MNI152", "fixed": mni, "fixed_labels": mni_lab, "moving": col, "moving_labels": col_lab},
             {"name": "MNI152 -> Colin27", "fixed": col, "fixed_labels": col_lab, "moving": mni, "moving_labels": mni_lab}]
    rng = np.random.default_rng(seed)
    base = normalize_intensity(col.array[0]) * 1000.0
    for k in range(n_synthetic):
        true = random_displacement(col.shape, rng, amplitude=amplitude)
        inv = spatial.invert(true)
        img = torch.from_numpy(base.astype(np.float32))[None, None]
        moved = spatial.warp(img, inv)
        moved = augment_intensity(moved / 1000.0, rng, 1.0) * 1000.0
        lab = torch.from_numpy(col_lab.array[0].astype(np.float32))[None, None]
        moved_lab = spatial.warp(lab, inv, mode="nearest")[0, 0].numpy().astype(np.uint8)
        fixed = col.with_array(base[None].astype(np.float32))
        pairs.append({"name": f"Colin27 synthetic warp {k + 1}", "fixed": fixed, "fixed_labels": col_lab,
                      "moving": col.with_array(moved[0].numpy()), "moving_labels": col_lab.with_array(moved_lab[None]),
                      "true": DisplacementField.from_voxel(true, col.affine)})
    return pairs


class _Ants:
    """The SyN worker process (one per benchmark run)."""

    def __init__(self, threads: int):
        env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
        self.proc = subprocess.Popen([str(ANTS_PY), str(Path(__file__).with_name("_ants_worker.py"))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def register(self, fixed, moving, workdir: Path):
        from medpipe.registration.field import DisplacementField

        f, m = workdir / "fixed.nii.gz", workdir / "moving.nii.gz"
        fixed.save(f)
        moving.save(m)
        self.proc.stdin.write(json.dumps({"fixed": str(f), "moving": str(m), "out_prefix": str(workdir / "syn_")}) + "\n")
        self.proc.stdin.flush()
        ans = json.loads(self.proc.stdout.readline())
        return DisplacementField.load(ans["field"]), ans["seconds"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _score(pair, field, seconds):
    import torch

    from medpipe.metrics import folding_percent, jacobian_determinant_l2r, registration_label_metrics, sdlogj
    from medpipe.registration.field import warp_image

    fixed, lab_f, lab_m = pair["fixed"], pair["fixed_labels"], pair["moving_labels"]
    field = field.on_grid(fixed)
    warped = warp_image(lab_m, field)
    m = registration_label_metrics(warped.array[0], lab_f.array[0], [1, 2], fixed.spacing, moving=lab_m.array[0])
    vox = field.to_voxel()
    jac = jacobian_determinant_l2r(vox)
    # a global affine part has a constant Jacobian; folding and SDlogJ describe the whole transform
    out = {"dice_gm": m[1]["dice"], "dice_wm": m[2]["dice"], "dice": float(np.nanmean([m[1]["dice"], m[2]["dice"]])),
           "hd95": float(np.nanmean([m[1]["hd95"], m[2]["hd95"]])), "folding_pct": folding_percent(jac),
           "sdlogj": sdlogj(jac), "seconds": seconds}
    if "true" in pair:
        brain = lab_f.array[0] > 0
        err = np.linalg.norm(field.array - pair["true"].array, axis=0)[brain]
        out["epe_mm"] = float(err.mean())
    del torch
    return out


def _bundle_evaluation(bundle: str, rows, real, synth, body_note: str) -> None:
    """The shipped bundle's held-out evaluation (Colin27 pairs, never trained on) next to its weights."""
    from medpipe.models.bundle import resolve_bundle_path

    path = resolve_bundle_path(bundle)
    if not path.is_dir():
        return
    out = {"source": body_note, "held_out_subject": "Colin27 (Debian mricron-data), GM/WM labels", "pairs": {}}
    for method in ("micdir", "micdir+io"):
        for name in real + synth:
            for r in rows.get(method, {}).get(name, []):
                out["pairs"].setdefault(name, {})[method] = {k: round(float(v), 4) for k, v in r.items()}
    (path / "held_out_evaluation.json").write_text(json.dumps(out, indent=1) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--synthetic", type=int, default=2)
    ap.add_argument("--amplitude", type=float, default=2.0)
    ap.add_argument("--micdir", default="brain_micdir")
    ap.add_argument("--voxelmorph", default=str(ROOT / "build" / "bundles" / "brain_voxelmorph"))
    ap.add_argument("--refine", type=int, default=10, help="instance-optimisation iterations for the MICDIR+IO row")
    ap.add_argument("--real", type=int, default=2, help="real pairs (0, 1 = Colin27 -> MNI152, 2 = both directions)")
    ap.add_argument("--methods", default="affine,demons,syn,voxelmorph,micdir,micdir-bf16,micdir+io")
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--json", type=Path, default=ROOT / "build" / "registration_benchmark.json")
    args = ap.parse_args()

    import SimpleITK as sitk
    import torch

    from medpipe.registration.register import register

    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    load_before = os.getloadavg()
    pairs = _pairs(args.synthetic, args.amplitude, seed=2026)
    pairs = pairs[:args.real] + [p for p in pairs if "true" in p]
    wanted = args.methods.split(",")
    ants = _Ants(args.threads) if ANTS_PY.is_file() and "syn" in wanted else None
    methods = [m for m in wanted if m != "syn" or ants]
    rows: dict[str, dict[str, list[dict]]] = {m: {} for m in methods}
    engines: dict[str, set[str]] = {}
    for p in pairs:  # warm-up: load the networks and compile them for every working-grid shape, outside the timings
        for kind in ("micdir", "voxelmorph"):
            if any(m.startswith(kind) for m in methods):
                for precision in ("fp32", "bf16") if f"{kind}-bf16" in methods else ("fp32",):
                    register(p["fixed"], p["moving"], kind, bundle=getattr(args, kind), warp=False, precision=precision)
    with tempfile.TemporaryDirectory() as tmp:
        for pair in pairs:
            for method in methods:
                t0 = time.perf_counter()
                if method == "syn":
                    field, secs = ants.register(pair["fixed"], pair["moving"], Path(tmp))
                else:
                    kind, bundle, refine, precision = {
                        "micdir": ("micdir", args.micdir, 0, "fp32"),
                        "micdir-bf16": ("micdir", args.micdir, 0, "bf16"),
                        "micdir+io": ("micdir", args.micdir, args.refine, "fp32"),
                        "voxelmorph": ("voxelmorph", args.voxelmorph, 0, "fp32")}.get(method, (method, None, None, "fp32"))
                    res = register(pair["fixed"], pair["moving"], kind, bundle=bundle, refine_iterations=refine, warp=False,
                                   precision=precision)
                    engines.setdefault(method, set()).add(res.facts.get("engine") or "-")
                    field, secs = res.field, res.total_seconds
                score = _score(pair, field, secs)
                rows[method].setdefault(pair["name"], []).append(score)
                print(f"{pair['name']:<28} {method:<11} Dice {score['dice']:.3f} HD95 {score['hd95']:.2f} "
                      f"fold {score['folding_pct']:.4f}% SDlogJ {score['sdlogj']:.3f} {secs:.1f} s "
                      f"(wall {time.perf_counter() - t0:.0f} s)" + (f" EPE {score['epe_mm']:.2f} mm" if "epe_mm" in score else ""),
                      flush=True)
    if ants:
        ants.close()
    load_after = os.getloadavg()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=1))

    def agg(method, key, names):
        vals = [r[key] for n in names for r in rows[method].get(n, []) if key in r]
        return float(np.mean(vals)) if vals else float("nan")

    real = [p["name"] for p in pairs if "true" not in p]
    synth = [p["name"] for p in pairs if "true" in p]
    table = []
    for method in methods:
        table.append([method, f"{agg(method, 'dice', real):.3f}", f"{agg(method, 'dice_gm', real):.3f} / "
                      f"{agg(method, 'dice_wm', real):.3f}", f"{agg(method, 'hd95', real):.2f}",
                      f"{agg(method, 'dice', synth):.3f}", f"{agg(method, 'epe_mm', synth):.2f}",
                      f"{agg(method, 'folding_pct', real + synth):.4f}", f"{agg(method, 'sdlogj', real + synth):.3f}",
                      f"{agg(method, 'seconds', real + synth):.1f}"])
    headers = ["method", "real Dice (mean GM/WM)", "real Dice GM / WM", "real HD95 mm", "synthetic Dice",
               "synthetic EPE mm", "folding % (J<=0)", "SDlogJ (L2R, +3)", "s / pair"]
    text = markdown_table(headers, table)
    print(text)
    syn_s = agg("syn", "seconds", real + synth) if ants else float("nan")
    body = (f"{len(real)} real pairs (Colin27 <-> MNI152 2009a, 2 mm, GM/WM labels) and {len(synth)} synthetic warps of "
            f"Colin27 (amplitude {args.amplitude} voxels, known truth); {args.threads} thread(s) for every method; "
            f"{load_phrase(load_before[0], load_after[0])}. MICDIR+IO = the MICDIR "
            f"bundle plus {args.refine} instance-optimisation steps (Adam on the half-resolution velocity, local NCC on the full-resolution images + diffusion), "
            "its seconds included. Networks ran on: "
            + ", ".join(f"{m} {'/'.join(sorted(e))}" for m, e in engines.items() if e != {"-"})
            + " (OpenVINO compiled per working-grid shape in a warm-up, outside the timings).\n\n" + text + "\n\n"
            + "".join(f"- {m}: {syn_s / agg(m, 'seconds', real + synth):.1f}x less time per pair than SyN\n"
                      for m in methods if ants and m != "syn"))
    if not args.no_record:
        _bundle_evaluation(args.micdir, rows, real, synth, body_note=f"benchmarks/registration.py, {args.threads} thread(s)")
        record("registration", "Deformable registration: affine, demons, ANTs SyN, VoxelMorph-style, MICDIR", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
