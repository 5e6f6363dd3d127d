"""The MRI job end to end (``pipelines/mri_brain.yaml``) against the same job built from the
reference tools, on simulated whole-brain k-space studies with known truth, in one run.

1. ``medpipe data mri-brain``-style studies: real T1 brains (MNI152 / Colin27) warped, with a
   lesion, 8-coil k-space 192x192 at 1 mm, 52 slices of 3 mm; truth GM / WM / lesion labels.
2. ``medpipe run mri_brain`` on them: per-stage and total seconds, per-stage peak memory
   (from each study's run.json).
3. Per stage, its quality against the truth, and the alternatives a user would glue together
   today, on the same undersampled k-space (4x equispaced, as the pipeline does):

   * reconstruction: zero-filled, CS (sigpy L1-wavelet, and BART's ``pics`` with ESPIRiT maps
     when BART is installed), CIRIM; SSIM / PSNR against the fully sampled RSS;
   * segmentation: the bundle on every reconstruction and on the fully sampled image, Dice per
     label against the truth: does reconstructing with CIRIM change the Dice the fully
     sampled image gets?
   * registration of the atlas to the CIRIM image: demons (the pipeline's default), MICDIR,
     MICDIR + instance optimisation, ANTs SyN (``build/ants-venv``) — Dice of the propagated
     GM/WM against the truth (lesion voxels left out), folding %, seconds.

    python benchmarks/mri_brain.py [--studies 3] [--threads 2] [--no-bart]
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import markdown_table, record  # noqa: E402

LABELS = {1: "grey_matter", 2: "white_matter", 3: "lesion"}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    from medpipe.metrics import dice

    return float(dice(a, b))


def _seg_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    return {name: _dice(pred == v, truth == v) for v, name in LABELS.items()}


def _recon_images(ks, cirim_image, cirim_seconds: float, bart: bool) -> dict[str, tuple]:
    """method -> (Image, seconds) for every reconstruction compared (CIRIM from the pipeline run)."""
    import shutil

    from medpipe.recon.reconstruct import reconstruct, to_image

    out = {"fully sampled": (to_image(ks, ks.reference, "fully sampled RSS"), 0.0)}
    for method in ("rss", "cs", *(("bart",) if bart and shutil.which("bart") else ())):
        t0 = time.perf_counter()
        res = reconstruct(ks, method)
        out[{"rss": "zero-filled", "cs": "CS (sigpy)", "bart": "CS (BART pics)"}[method]] = (
            to_image(ks, res.magnitude, method), time.perf_counter() - t0)
    out["CIRIM"] = (cirim_image, cirim_seconds)
    return out


def _registrations(image, truth: np.ndarray, field_demons, ants, work: Path) -> dict[str, dict]:
    from medpipe.io.volumes import read_volume
    from medpipe.metrics import folding_percent, jacobian_determinant_l2r
    from medpipe.models.bundle import resolve_bundle_path
    from medpipe.registration.field import warp_image
    from medpipe.registration.register import register

    bundle = resolve_bundle_path("brain_micdir")
    atlas = read_volume(bundle / "atlas" / "image.nii.gz")
    atlas.meta.modality = "MR"
    atlas_labels = read_volume(bundle / "atlas" / "labels.nii.gz", is_label=True)
    scored = truth != 3  # the lesion replaced tissue the atlas still has

    def score(field, seconds) -> dict:
        lab = warp_image(atlas_labels, field.on_grid(image), label_mode="onehot").array[0]
        jac = jacobian_determinant_l2r(field.on_grid(image).to_voxel())
        gm, wm = (_dice((lab == v) & scored, (truth == v) & scored) for v in (1, 2))
        return {"dice_gm": gm, "dice_wm": wm, "dice": (gm + wm) / 2, "folding_pct": folding_percent(jac),
                "seconds": seconds}

    out = {"demons (pipeline)": score(*field_demons)}
    for name, method, kw in (("MICDIR", "micdir", {}), ("MICDIR + IO 10", "micdir", {"refine_iterations": 10})):
        t0 = time.perf_counter()
        res = register(image, atlas, method, bundle="brain_micdir", **kw)
        out[name] = score(res.field, time.perf_counter() - t0)
    if ants is not None:  # ANTs' own affine + SyN, composed into one field
        field, seconds = ants.register(image, atlas, work)
        out["ANTs SyN"] = score(field, seconds)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--studies", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--no-bart", dest="bart", action="store_false", help="leave BART pics out")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    from medpipe.threads import apply_threads

    apply_threads(args.threads)
    from medpipe.data.mri_brain_studies import write_mri_brain_studies
    from medpipe.inference.bundle_segment import segment_image
    from medpipe.io.kspace import read_kspace
    from medpipe.io.volumes import read_volume
    from medpipe.metrics import psnr, ssim
    from medpipe.models.bundle import load_bundle, resolve_bundle_path
    from medpipe.recon.masks import make_mask
    from medpipe.registration.field import DisplacementField

    work = args.work or Path(tempfile.mkdtemp(prefix="medpipe-mri-brain-"))
    load_before = os.getloadavg()
    rows = write_mri_brain_studies(work / "studies", args.studies, seed=100, truth_dir=work / "truth", overwrite=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), MEDPIPE_CACHE=str(work / "cache"))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "medpipe", "run", "mri_brain", str(work / "studies"), "-o",
                    str(work / "runs")], check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0

    ants = None
    ants_py = ROOT / "build" / "ants-venv" / "bin" / "python"
    if ants_py.is_file():
        from registration import _Ants

        ants = _Ants(args.threads)
    bundle = load_bundle(resolve_bundle_path("brain_t1_lesion"), expect_modality="MR")
    stage_rows: dict[str, list[tuple[float, float]]] = {}
    totals, recon_q, seg_q, reg_q = [], {}, {}, {}
    for r in rows:
        name = r["file"].name.removesuffix(".h5")
        run = json.loads((work / "runs" / name / "run.json").read_text())
        totals.append(run["duration_s"])
        for stage, rec in run["stages"].items():
            stage_rows.setdefault(stage, []).append((rec["duration_s"], rec.get("peak_rss_mb") or 0.0))
        truth = read_volume(r["truth"], is_label=True).array[0]
        ks = read_kspace(r["file"])
        ks = ks.undersample(make_mask("equispaced", ks.matrix, 4.0, None, 0))
        art = work / "runs" / name / "artifacts"
        cirim = read_volume(art / "cirim" / "image.nii.gz")
        cirim.meta.modality = "MR"
        recons = _recon_images(ks, cirim, run["stages"]["cirim"]["duration_s"], args.bart)
        ref = ks.reference
        for method, (img, seconds) in recons.items():
            vol = np.transpose(img.array[0], (2, 1, 0))
            q = recon_q.setdefault(method, {"ssim": [], "psnr": [], "seconds": []})
            if method != "fully sampled":
                q["ssim"].append(ssim(ref, vol))
                q["psnr"].append(psnr(ref, vol))
                q["seconds"].append(seconds)
            img.meta.modality = "MR"
            pred = segment_image(img, bundle, tta=False).labels.array[0]
            for lab, d in _seg_scores(pred, truth).items():
                seg_q.setdefault(method, {}).setdefault(lab, []).append(d)
        field = DisplacementField.load(art / "atlas" / "field.nii.gz")
        for method, m in _registrations(cirim, truth, (field, run["stages"]["atlas"]["duration_s"]), ants,
                                        work).items():
            for k, v in m.items():
                reg_q.setdefault(method, {}).setdefault(k, []).append(v)
    if ants is not None:
        ants.close()
    load_after = os.getloadavg()

    mean = lambda v: float(np.nanmean(v)) if len(v) else float("nan")  # noqa: E731
    n = len(rows)
    t_rows = [[s, f"{mean([a for a, _ in v]):.2f}", f"{max(b for _, b in v):.0f}"] for s, v in stage_rows.items()]
    t_rows.append(["**total per study**", f"{mean(totals):.1f}", ""])
    r_rows = [[m, f"{mean(q['ssim']):.3f}" if q["ssim"] else "—", f"{mean(q['psnr']):.2f}" if q["psnr"] else "—",
               f"{mean(q['seconds']):.1f}" if q["seconds"] else "—"] for m, q in recon_q.items()]
    s_rows = [[m, *(f"{mean(d[lab]):.3f}" for lab in LABELS.values()),
               f"{mean([mean(d[lab]) for lab in LABELS.values()]):.3f}"] for m, d in seg_q.items()]
    g_rows = [[m, f"{mean(d['dice']):.3f}", f"{mean(d['dice_gm']):.3f} / {mean(d['dice_wm']):.3f}",
               f"{mean(d['folding_pct']):.4f}", f"{mean(d['seconds']):.1f}"] for m, d in reg_q.items()]
    full, cir = seg_q["fully sampled"], seg_q["CIRIM"]
    delta = {lab: mean(cir[lab]) - mean(full[lab]) for lab in LABELS.values()}
    body = (
        f"{n} simulated studies (MNI152 / Colin27 warped, lesion, 8 coils, 192x192 at 1 mm, 52 x 3 mm slices, "
        f"SNR 30), 4x equispaced undersampling, {args.threads} threads; `medpipe run mri_brain` wall {wall:.1f} s "
        f"for the {n}. Load average {load_before[0]:.1f} before, {load_after[0]:.1f} after.\n\n"
        "Per stage (mean seconds per study, peak RSS of the stage's process):\n\n"
        + markdown_table(["stage", "s / study", "peak MB"], t_rows)
        + "\n\nReconstruction against the fully sampled RSS (whole image):\n\n"
        + markdown_table(["method", "SSIM", "PSNR dB", "s / study"], r_rows)
        + "\n\nSegmentation (the shipped `brain_t1_lesion` bundle) of each reconstruction, Dice against the truth:\n\n"
        + markdown_table(["input image", "grey matter", "white matter", "lesion", "mean"], s_rows)
        + "\n\nCIRIM vs the fully sampled image, Dice difference: "
        + ", ".join(f"{lab} {d:+.3f}" for lab, d in delta.items())
        + "\n\nAtlas (MNI152 2009a) registered to the CIRIM image, propagated GM/WM against the truth "
        "(lesion voxels left out):\n\n"
        + markdown_table(["method", "Dice (mean GM/WM)", "GM / WM", "folding %", "s / study"], g_rows)
    )
    print(body)
    if not args.no_record:
        record("mri_brain", "The MRI job end to end: k-space -> CIRIM -> segmentation -> atlas (vs reference tools)",
               body)


if __name__ == "__main__":
    main()
