"""Train a segmentation network on an nnU-Net-format dataset and ship it as a bundle.

The loop is nnU-Net's (patches with 1/3 foreground oversampling, Dice+CE with deep
supervision, SGD lr 1e-2 momentum 0.99 Nesterov wd 3e-5 with poly decay 0.9, gradient
clipping at 12), sized for a CPU: a fixed number of iterations per epoch, full-case
sliding-window validation every K epochs, ``checkpoint_latest.pt`` (model, optimizer,
epoch, every RNG state, log) every N epochs so ``resume`` continues bit-for-bit. At the
end the validation cases are predicted on their ORIGINAL grids (preprocess -> sliding
window -> restore geometry) and evaluated; the bundle gets the weights, the plan's
preprocessing, label names/colours and that evaluation report.

Work files (preprocessed cache, checkpoints, log) live in ``work_dir`` (default
``<bundle>.work``), never in the bundle, which stays small enough to ship.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medpipe.errors import InputError
from medpipe.training.config import TrainConfig
from medpipe.training.dataset import TrainingDataset, open_dataset, validate_dataset
from medpipe.training.fingerprint import compute_fingerprint
from medpipe.training.log import plot_learning_curve, write_log
from medpipe.training.plan import Plan, make_plan
from medpipe.training.preprocess import load_preprocessed, preprocess_dataset, preprocessing_block
from medpipe.training.splits import kfold_split

__all__ = ["TrainResult", "train", "poly_lr", "CHECKPOINT", "LOG_FILE", "CURVE_FILE"]

CHECKPOINT = "checkpoint_latest.pt"
LOG_FILE = "training_log.csv"
CURVE_FILE = "learning_curve.png"


@dataclass
class TrainResult:
    bundle: Path | None
    work_dir: Path
    log: list[dict[str, Any]]
    plan: Plan
    val_cases: list[str]
    evaluation: dict[str, Any] | None
    seconds_per_epoch: float


def poly_lr(base: float, epoch: int, epochs: int, exponent: float = 0.9) -> float:
    """nnU-Net's PolyLRScheduler: ``base * (1 - epoch / epochs) ** exponent``."""
    return base * (1 - epoch / epochs) ** exponent


def _model_facts(name: str, in_channels: int, num_classes: int) -> tuple[int, int]:
    """(spatial dims, input divisor) of a registered model, read on the meta device."""
    from medpipe.models import create_model

    with torch.device("meta"):
        net = create_model(name, in_channels=in_channels, num_classes=num_classes)
    dims = int(getattr(net, "spatial_dims", 3))
    return dims, int(max(getattr(net, "input_shape_must_be_divisible_by", [1]) or [1]))


def _build_model(cfg: TrainConfig, plan: Plan, in_channels: int, num_classes: int,
                 two_d: bool = False) -> tuple[torch.nn.Module, dict]:
    """The network to train and the ``arch_config`` its bundle records. 3D (STU-Net): the
    plan's pools/kernels and deep supervision; 2D networks take only the channel counts."""
    from medpipe.models import create_model
    from medpipe.models.registry import accepts

    torch.manual_seed(cfg.seed)
    if two_d:
        arch = {"in_channels": in_channels, "num_classes": num_classes}
        model = create_model(cfg.model, **arch)
    else:
        arch = {"in_channels": in_channels, "num_classes": num_classes,
                "pool_op_kernel_sizes": plan.pool_op_kernel_sizes, "conv_kernel_sizes": plan.conv_kernel_sizes}
        if accepts(cfg.model, "patch_size"):  # built for one patch size (U-Mamba_Enc's channel tokens)
            arch["patch_size"] = list(plan.patch_size)
        model = create_model(cfg.model, deep_supervision=True, **arch)
        arch = {**arch, "deep_supervision": False}
    if cfg.init_weights:
        from medpipe.models.pretrained import load_pretrained

        load_pretrained(model, cfg.init_weights)
    return model, arch


def _optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.learning_rate, momentum=cfg.momentum,
                               nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def _label_colors(names: dict[int, str]) -> dict[int, tuple[int, int, int]]:
    from medpipe.data.brain_study import BRAIN_COLORS, BRAIN_LABELS
    from medpipe.data.brain_tumour import BRATS_COLORS, BRATS_LABELS
    from medpipe.data.phantoms import CT_COLORS, CT_LABELS, MR_COLORS, MR_LABELS
    from medpipe.data.synapse import SYNAPSE_COLORS

    known = ({n: CT_COLORS[k] for k, n in CT_LABELS.items()} | {n: MR_COLORS[k] for k, n in MR_LABELS.items()}
             | SYNAPSE_COLORS)
    known |= {n: BRATS_COLORS[k] for k, n in BRATS_LABELS.items()}
    # tissue over an MR image: coloured, not grey on grey (the MRI job's overlays)
    known |= {n: BRAIN_COLORS[k] for k, n in BRAIN_LABELS.items()}
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    out = {0: (0, 0, 0)}
    for k, n in names.items():
        if k:
            out[k] = known.get(n) or tuple(int(255 * c) for c in cmap((k - 1) % 10)[:3])
    return out


def _val_dice(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> float:
    """Mean foreground Dice of one case over classes present in either map."""
    from medpipe.metrics import dice

    vals = [dice(pred == c, gt == c, ignore_empty=False) for c in range(1, num_classes)
            if (gt == c).any() or (pred == c).any()]
    return float(np.mean(vals)) if vals else float("nan")


def _validate(model, cases: list[dict], plan: Plan, num_classes: int, precision: str, tta: bool) -> float:
    from medpipe.inference.sliding_window import predict

    scores = []
    for c in cases:
        pred = predict(model, c["image"], plan.patch_size, num_classes=num_classes, precision=precision,
                       tta_axes=plan.tta_axes if tta else (), progress=False).labels
        scores.append(_val_dice(pred, c["label"], num_classes))
    model.train()
    return float(np.nanmean(scores)) if scores else float("nan")


def _rng_state(sampler, augmenter) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "sampler": sampler.rng.bit_generator.state,
            "augment": augmenter.get_state() if augmenter is not None else None}


def _set_rng_state(state: dict[str, Any], sampler, augmenter) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    sampler.rng.bit_generator.state = state["sampler"]
    if augmenter is not None and state.get("augment") is not None:
        augmenter.set_state(state["augment"])


def _save_checkpoint(path: Path, model, optimizer, epoch: int, log, sampler, augmenter, cfg, plan) -> None:
    from medpipe.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                    "log": log, "rng": _rng_state(sampler, augmenter), "config": cfg.model_dump(),
                    "plan": plan.to_dict()}, tmp)


def train(
    dataset: str | Path | TrainingDataset,
    bundle: str | Path | None,
    cfg: TrainConfig,
    *,
    work_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stop_after_epoch: int | None = None,
) -> TrainResult:
    """Plan, preprocess, train, validate, evaluate and save the bundle (``bundle=None``: no bundle).

    ``stop_after_epoch`` checkpoints and returns after that epoch (no bundle), for
    time-boxed sessions continued later with ``resume=True``.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from medpipe.inference.precision import resolve_precision
    from medpipe.io.atomic import check_writable
    from medpipe.training.augment import Augmenter
    from medpipe.training.loss import DeepSupervisionLoss, DiceCELoss
    from medpipe.training.sampling import PatchSampler

    if bundle is not None:
        check_writable(Path(bundle), overwrite)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ds = dataset if isinstance(dataset, TrainingDataset) else open_dataset(dataset)
    validate_dataset(ds)
    work = Path(work_dir) if work_dir else Path(f"{bundle}.work") if bundle else None
    if work is None:
        raise InputError("train needs a bundle path or a work_dir for its checkpoints")
    ckpt_path = work / CHECKPOINT
    if resume and not ckpt_path.exists():
        raise InputError(f"--resume: no {CHECKPOINT} in {work}")
    if not resume and ckpt_path.exists() and not overwrite:
        raise InputError(f"{work} already holds a training run ({CHECKPOINT}); pass --resume to continue "
                         "it or --overwrite to start again")

    num_classes, in_channels = ds.num_classes, len(ds.channels)
    dims, divisor = _model_facts(cfg.model, in_channels, num_classes)
    two_d = dims == 2
    if cfg.slices and not two_d:
        raise InputError(f"--slices {cfg.slices} trains a 2D network on slices, but {cfg.model} is a 3D network")
    fp = compute_fingerprint(ds, seed=cfg.seed)
    if two_d:
        from medpipe.training.plan2d import make_plan_2d

        plan = make_plan_2d(fp, divisor=divisor, slices=cfg.slices, spacing=cfg.spacing, patch_size=cfg.patch_size,
                            label_names=ds.labels, mirror=cfg.mirror_axes)
    else:
        plan = make_plan(fp, spacing=cfg.spacing, patch_size=cfg.patch_size, max_patch_voxels=cfg.max_patch_voxels,
                         label_names=ds.labels, mirror=cfg.mirror_axes)
    train_names, val_names = kfold_split([c.name for c in ds.cases], cfg.fold, cfg.n_folds)
    work.mkdir(parents=True, exist_ok=True)  # only once the inputs are known to be usable
    (work / "fingerprint.json").write_text(json.dumps(fp.to_dict()))
    (work / "plan.json").write_text(json.dumps(plan.to_dict(), indent=2))
    files = preprocess_dataset(ds.cases, plan, work, progress=progress)
    train_cases = [load_preprocessed(files[n]) for n in train_names]
    val_cases = [load_preprocessed(files[n]) for n in val_names]

    model, arch = _build_model(cfg, plan, in_channels, num_classes, two_d)
    # a model may pin its training precision (U-Mamba: fp32, its authors found AMP gives NaNs)
    pinned = getattr(model, "training_precision", None)
    precision = resolve_precision(pinned if cfg.precision == "auto" and pinned else cfg.precision)
    model = precision.prepare_model(model)
    optimizer = _optimizer(cfg, model)
    # a 2D network trains on (P, P, 1) patches of the oriented volumes: one slice each
    sampler = PatchSampler(train_cases, [*plan.patch_size, 1] if two_d else plan.patch_size, cfg.fg_fraction,
                           seed=cfg.seed)
    augmenter = None
    if cfg.augment and two_d:
        from medpipe.training.augment2d import Augmenter2D

        augmenter = Augmenter2D(seed=cfg.seed, mirror_axes=tuple(plan.tta_axes))
    elif cfg.augment:
        augmenter = Augmenter(seed=cfg.seed, elastic=cfg.elastic, mirror_axes=tuple(plan.tta_axes))
    weight_ce, weight_dice = cfg.loss_weights or ((0.5, 0.5) if two_d else (1.0, 1.0))
    loss_fn = DeepSupervisionLoss(DiceCELoss(weight_ce, weight_dice, batch_dice=two_d))  # nnU-Net: batch Dice in 2D
    log: list[dict[str, Any]] = []
    start = 0
    if resume:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if state["plan"] != plan.to_dict():
            raise InputError(f"--resume: the plan in {ckpt_path} differs from this dataset/config's plan")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        log, start = state["log"], state["epoch"] + 1
        _set_rng_state(state["rng"], sampler, augmenter)
    if not resume:
        torch.manual_seed(cfg.seed)

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeRemainingColumn()]
    model.train()
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task(f"training {cfg.model}", total=cfg.epochs * cfg.iters_per_epoch,
                            completed=start * cfg.iters_per_epoch, info="")
        for epoch in range(start, cfg.epochs):
            t0 = time.perf_counter()
            lr = poly_lr(cfg.learning_rate, epoch, cfg.epochs, cfg.poly_exponent)
            for group in optimizer.param_groups:
                group["lr"] = lr
            losses = []
            for _ in range(cfg.iters_per_epoch):
                x, y = sampler.batch(cfg.batch_size)
                if two_d:
                    x, y = x[..., 0], y[..., 0]
                if augmenter is not None:
                    pairs = [augmenter(x[i], y[i]) for i in range(len(x))]
                    x = np.stack([p[0] for p in pairs])
                    y = np.stack([p[1] for p in pairs])
                xt = precision.prepare_input(torch.from_numpy(x))
                yt = torch.from_numpy(y)
                optimizer.zero_grad(set_to_none=True)
                with precision.autocast():
                    out = model(xt)
                loss = loss_fn(out, yt)
                if not torch.isfinite(loss):
                    raise InputError(f"training diverged at epoch {epoch} (loss {loss.item()}); try a lower --lr")
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                losses.append(float(loss.item()))
                bar.update(task, advance=1, info=f"epoch {epoch + 1}/{cfg.epochs} loss {np.mean(losses):.3f}")
            row: dict[str, Any] = {"epoch": epoch, "train_loss": round(float(np.mean(losses)), 5),
                                   "val_dice": None, "lr": lr}
            last = epoch == cfg.epochs - 1
            if val_cases and ((epoch + 1) % cfg.val_every == 0 or last):
                row["val_dice"] = round(_validate(model, val_cases, plan, num_classes, precision.name, cfg.val_tta), 5)
                model = precision.prepare_model(model)
            row["epoch_seconds"] = round(time.perf_counter() - t0, 2)
            log.append(row)
            write_log(log, work / LOG_FILE)
            plot_learning_curve(log, work / CURVE_FILE)
            stop = stop_after_epoch is not None and epoch >= stop_after_epoch and not last
            if (epoch + 1) % cfg.checkpoint_every == 0 or last or stop:
                _save_checkpoint(ckpt_path, model, optimizer, epoch, log, sampler, augmenter, cfg, plan)
            if val_cases and row["val_dice"] is not None:
                bar.console.print(f"epoch {epoch + 1}: loss {row['train_loss']:.4f}, val Dice {row['val_dice']:.4f}")
            if stop:
                break

    train_rows = [r for r in log if r.get("epoch_seconds")]
    sec = float(np.median([r["epoch_seconds"] for r in train_rows])) if train_rows else float("nan")
    if len(log) < cfg.epochs:  # stopped early: the checkpoint is the result
        return TrainResult(None, work, log, plan, val_names, None, sec)
    evaluation = None
    report = None
    if val_names:
        from medpipe.training.validate import evaluate_original_grid

        report = evaluate_original_grid(model, ds, val_names, plan, cfg, progress=progress)
        evaluation = report.summary()
    out = None
    if bundle is not None:
        out = _write_bundle(Path(bundle), model, arch, ds, plan, cfg, log, sec, report, work, overwrite)
    return TrainResult(out, work, log, plan, val_names, evaluation, sec)


def _write_bundle(path: Path, model, arch, ds: TrainingDataset, plan: Plan, cfg: TrainConfig, log, sec: float,
                  report, work: Path, overwrite: bool) -> Path:
    import shutil

    from medpipe.evaluation import write_report_files
    from medpipe.io.atomic import atomic_dir
    from medpipe.models.bundle import BundleConfig, save_bundle

    colors = _label_colors(ds.labels)
    last_val = next((r["val_dice"] for r in reversed(log) if r.get("val_dice") is not None), None)
    evaluation = None
    if report is not None:
        s = report.summary()
        evaluation = {"cases": s["n_cases"], "split": f"fold {cfg.fold} of {cfg.n_folds}",
                      "mean_dice": s["mean"]["dice"], "mean_hd95_mm": s["mean"]["hd95"],
                      "mean_nsd": s["mean"]["nsd"], "nsd_tolerance_mm": cfg.nsd_tolerance_mm,
                      "dice_per_label": {k: v["dice"] for k, v in s["per_label"].items()}}
    config = BundleConfig(
        name=cfg.name or path.name, version=cfg.version,
        description=cfg.description or f"{cfg.model} trained by medpipe train on {ds.extra.get('name', ds.root.name)}",
        architecture=cfg.model, arch_config=arch,
        modality="CT" if ds.modality.upper() == "CT" else "MR", channels=list(ds.channels),
        labels={k: {"name": n, "color": colors[k]} for k, n in ds.labels.items()},
        preprocessing=preprocessing_block(plan),
        training={"dataset": str(ds.extra.get("name", ds.root.name)), "cases": len(ds.cases),
                  "fold": cfg.fold, "n_folds": cfg.n_folds, "epochs": cfg.epochs,
                  "iters_per_epoch": cfg.iters_per_epoch, "batch_size": cfg.batch_size,
                  "optimizer": cfg.optimizer, "lr": cfg.learning_rate, "momentum": cfg.momentum,
                  "weight_decay": cfg.weight_decay, "seed": cfg.seed, "slices": cfg.slices,
                  "final_train_loss": log[-1]["train_loss"] if log else None, "last_val_dice": last_val,
                  "seconds_per_epoch": None if math.isnan(sec) else round(sec, 2),
                  "pool_op_kernel_sizes": plan.pool_op_kernel_sizes},
        evaluation=evaluation,
    )
    with atomic_dir(path, overwrite=overwrite) as tmp:
        save_bundle(tmp, model, config, overwrite=True)
        for name in (LOG_FILE, CURVE_FILE, "plan.json"):
            if (work / name).exists():
                shutil.copy2(work / name, tmp / name)
        if report is not None:
            write_report_files(report, tmp)
    return path
