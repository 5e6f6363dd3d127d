"""2D hybrids vs a 2D CNN vs 3D STU-Net on the same phantom volumes and the same budget.

ParaTransCNN and TransDAE (axial slices), an smp U-Net with a ResNet-34 encoder (axial
slices) and STU-Net (3D patches) are trained by the same trainer on the same CT phantom
volumes (Synapse label numbering), the same split, the same number of epochs x iterations,
and evaluated on the same held-out volumes on their original grids, two ways:

* medpipe's metrics: Dice per organ (nnU-Net rule) and HD95 in mm (MONAI definition);
* the Synapse papers' convention (TransUNet/medpy: voxel units, empty prediction -> 0/0).

Training is interleaved epoch by epoch across the models (``stop_after_epoch`` + resume),
and inference volume by volume, so a loaded machine slows every model alike; s/epoch and
inference seconds per volume (medpipe's engine, backend ``auto``) are medians.

    .venv/bin/python benchmarks/models_2d.py --record          # defaults: 12 cases, 5 x 16 iterations
    .venv/bin/python benchmarks/models_2d.py --cases 6 --epochs 1 --iters 2 --models paratranscnn_tiny,stunet_xs
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._results import markdown_table, record  # noqa: E402

DEFAULT_MODELS = "paratranscnn_s,transdae_s,smp_unet_resnet34,stunet_xs"


def _config(model: str, args):
    from medpipe.models import model_info
    from medpipe.training.config import TrainConfig

    common = dict(model=model, epochs=args.epochs, iters_per_epoch=args.iters, fold=0, n_folds=4, seed=0,
                  val_every=args.epochs, checkpoint_every=1, precision="fp32", threads=args.threads)
    if model_info(model).dims == 2:  # the shipped 2D recipe (configs/train_ct_phantom_2d.yaml)
        if args.optimizer == "sgd":  # the papers': SGD 0.01, momentum 0.9, wd 1e-4
            opt = dict(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4, nesterov=False)
        else:  # from scratch on a CPU budget SGD stays in the all-background phase (see the recipe)
            opt = dict(optimizer="adamw", lr=1e-3, weight_decay=1e-4)
        return TrainConfig(**common, **opt, slices="axial", batch_size=args.batch_2d, loss_weights=(0.5, 0.5),
                           fg_fraction=0.5)
    return TrainConfig(**common, batch_size=2, patch_size=[48, 48, 48], spacing=[2.0, 2.0, 2.0])  # nnU-Net's


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=12)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--iters", type=int, default=16)
    p.add_argument("--batch-2d", type=int, default=8, help="slices per iteration for the 2D models")
    p.add_argument("--threads", type=int, default=1, help="1: on a shared 2-core machine 2 threads measured ~5x slower")
    p.add_argument("--models", default=DEFAULT_MODELS)
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw", help="for the 2D models")
    p.add_argument("--work", type=Path, default=Path("build/bench_models_2d"))
    p.add_argument("--record", action="store_true", help="write the results into benchmarks/RESULTS.md")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from medpipe.data.nnunet_dataset import write_phantom_dataset
    from medpipe.data.synapse import SYNAPSE_LABELS
    from medpipe.metrics import evaluate_case
    from medpipe.models import model_info
    from medpipe.models.bundle import load_bundle
    from medpipe.paper_metrics import transunet_case_metrics, transunet_summary
    from medpipe.training.dataset import load_case, open_dataset
    from medpipe.training.trainer import train
    from medpipe.training.validate import predict_case

    torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    shutil.rmtree(args.work, ignore_errors=True)
    ds_dir = args.work / "dataset"
    write_phantom_dataset(ds_dir, args.cases, seed=123, labels="synapse", progress=False)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    results = {}
    for epoch in range(args.epochs):  # interleaved: one epoch of every model in turn
        for m in models:
            last = epoch == args.epochs - 1
            r = train(ds_dir, args.work / m / "bundle" if last else None, _config(m, args),
                      work_dir=args.work / m / "work", resume=epoch > 0, overwrite=epoch > 0, progress=False,
                      stop_after_epoch=None if last else epoch)
            print(f"epoch {epoch + 1}/{args.epochs} {m}: loss {r.log[-1]['train_loss']:.4f} "
                  f"({r.log[-1]['epoch_seconds']:.0f} s)", flush=True)
            results[m] = r
    train_minutes = (time.perf_counter() - t0) / 60

    ds = open_dataset(ds_dir)
    by_name = {c.name: c for c in ds.cases}
    val_names = results[models[0]].val_cases
    bundles = {m: load_bundle(args.work / m / "bundle") for m in models}
    nets = {m: b.build_model() for m, b in bundles.items()}
    ours = {m: [] for m in models}
    paper = {m: [] for m in models}
    seconds = {m: [] for m in models}
    labels = sorted(SYNAPSE_LABELS)
    seen: set[int] = set()
    for name in val_names:  # interleaved inference: every model on this volume, then the next
        image, gt = load_case(by_name[name])
        seen |= {int(v) for v in np.unique(gt.array)}
        for m in models:
            prep = bundles[m].config.preprocessing.model_dump()
            predict_case(nets[m], image, prep, ds.num_classes)  # warm-up (OpenVINO conversion is cached after)
            t = time.perf_counter()
            pred = predict_case(nets[m], image, prep, ds.num_classes)
            seconds[m].append(time.perf_counter() - t)
            p_arr, g_arr = pred.array[0], gt.array[0]
            ours[m].append(evaluate_case(p_arr, g_arr, labels, spacing=image.spacing))
            paper[m].append(transunet_case_metrics(p_arr, g_arr, labels))
    load_after = os.getloadavg()

    present = [k for k in labels if k in seen]  # organs the held-out volumes hold
    rows, organ_rows = [], []
    for m in models:
        dice = [np.nanmean([lm.dice for lm in case if lm.label in present]) for case in ours[m]]
        hd = [np.nanmean([lm.hd95 for lm in case if lm.label in present]) for case in ours[m]]
        tu = transunet_summary(paper[m], {k: SYNAPSE_LABELS[k] for k in present})
        secs = statistics.median(r["epoch_seconds"] for r in results[m].log)
        rows.append([f"`{m}`", f"{model_info(m, num_classes=9).params / 1e6:.2f} M",
                     "3D" if model_info(m).dims == 3 else "2D", f"{np.mean(dice):.3f}", f"{np.nanmean(hd):.2f}",
                     f"{tu['mean']['dice']:.3f}", f"{tu['mean']['hd95_voxels']:.2f}", f"{secs:.0f}",
                     f"{statistics.median(seconds[m]):.2f}"])
        organ_rows.append([f"`{m}`"] + [f"{np.nanmean([c[i].dice for c in ours[m] if i < len(c)]):.3f}"
                                         for i, k in enumerate(labels) if k in present])
    cfg2d, cfg3d = _config("paratranscnn_tiny", args), _config("stunet_xs", args)
    body = (
        f"{args.cases} CT phantom volumes (Synapse label numbering; the phantom has no gallbladder, so 7 organs "
        f"are scored), fold 0 of 4: {len(val_names)} held-out volumes scored on their original grids. Budget per "
        f"model: {args.epochs} epochs x {args.iters} iterations; 2D models {cfg2d.batch_size} axial slices per "
        f"iteration ({cfg2d.optimizer} lr {cfg2d.learning_rate}, 0.5 CE + 0.5 batch Dice), STU-Net {cfg3d.batch_size} patches of 48^3 at "
        f"2 mm (nnU-Net's recipe). Training interleaved epoch by epoch ({train_minutes:.0f} min in all), inference "
        f"volume by volume. Load average (1/5/15 min) before {tuple(round(v, 1) for v in load_before)}, after "
        f"{tuple(round(v, 1) for v in load_after)}: the machine was shared, so seconds are upper bounds; the "
        "ratios between models hold because every model ran interleaved under the same load.\n\n"
        + markdown_table(["model", "params (9 classes)", "dims", "Dice (medpipe)", "HD95 mm (medpipe)",
                          "Dice (TransUNet conv.)", "HD95 voxels (TransUNet conv.)", "s/epoch",
                          "inference s/volume"], rows)
        + "\n\nPer-organ held-out Dice (medpipe's rule):\n\n"
        + markdown_table(["model"] + [SYNAPSE_LABELS[k] for k in present], organ_rows)
        + "\n\nSizes: the 2D hybrids run at their small sizes (`paratranscnn_s`, `transdae_s`); the published "
          "ParaTransCNN (245.5 M parameters) and TransDAE (30.5 M) do not train in this budget on a 2-core CPU."
    )
    print(body)
    if args.record:
        record("models_2d", "2D segmentation models vs STU-Net 3D on the same phantoms and budget", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
