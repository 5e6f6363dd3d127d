"""``medpipe train DATASET -o BUNDLE``: train a segmentation bundle on an nnU-Net-format dataset.

Example:
    medpipe train Dataset001_CT --model stunet-xs -o bundles/ct --epochs 40 --iters-per-epoch 50 \\
        --patch 48,48,48 --fold 0
    medpipe train Dataset001_CT -o bundles/ct --resume      # continue from checkpoint_latest.pt
    medpipe train Dataset001_CT --model paratranscnn --slices axial -o bundles/ct2d   # a 2D network on slices
"""

from __future__ import annotations

from pathlib import Path

import typer

from medpipe.cli.app import app


def _ints(text: str | None, what: str, n: int = 3) -> list[int] | None:
    from medpipe.errors import InputError

    if not text:
        return None
    try:
        vals = [int(t) for t in text.split(",")]
    except ValueError as exc:
        raise InputError(f"{what} must be {n} comma-separated integers such as 64,64,64, got {text!r}") from exc
    if len(vals) == 1:
        vals = vals * n
    if len(vals) not in (2, n):  # two values: an in-plane patch for a 2D network
        raise InputError(f"{what} must have {n} values (2 for a 2D network), got {text!r}")
    return vals


def _floats(text: str | None, what: str) -> list[float] | None:
    from medpipe.errors import InputError

    if not text:
        return None
    try:
        vals = [float(t) for t in text.split(",")]
    except ValueError as exc:
        raise InputError(f"{what} must be comma-separated numbers such as 2.5,2.5,2.5, got {text!r}") from exc
    return vals * 3 if len(vals) == 1 else vals


@app.command()
def train(
    dataset: Path = typer.Argument(..., help="nnU-Net v2 dataset folder (dataset.json, imagesTr, labelsTr) or a CSV of image,label."),
    out: Path = typer.Option(..., "-o", "--out", help="Bundle folder to write."),
    model: str | None = typer.Option(None, "--model", help="Architecture, e.g. stunet-xs, stunet-s (default stunet_xs); 2D: paratranscnn, transdae, smp_unet_resnet34."),
    epochs: int | None = typer.Option(None, "--epochs", help="Number of epochs."),
    iters_per_epoch: int | None = typer.Option(None, "--iters-per-epoch", help="Training iterations per epoch."),
    patch: str | None = typer.Option(None, "--patch", help="Patch size, e.g. 64,64,64 (default: planned)."),
    spacing: str | None = typer.Option(None, "--spacing", help="Target spacing in mm (default: planned, median)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Patches per iteration."),
    fold: int | None = typer.Option(None, "--fold", help="Cross-validation fold (0..4; -1 = all cases, no validation)."),
    optimizer: str | None = typer.Option(None, "--optimizer", help="sgd (nnU-Net) or adamw."),
    lr: float | None = typer.Option(None, "--lr", help="Initial learning rate (sgd 1e-2, adamw 1e-3)."),
    precision: str | None = typer.Option(None, "--precision", help="auto, bf16 or fp32."),
    config: Path | None = typer.Option(None, "--config", help="YAML with a training: section (CLI options override it)."),
    work_dir: Path | None = typer.Option(None, "--work-dir", help="Checkpoints/cache folder (default BUNDLE.work)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from WORK_DIR/checkpoint_latest.pt."),
    slices: str | None = typer.Option(None, "--slices", help="2D networks on 3D volumes: train on axial, coronal or sagittal slices."),
    init_weights: Path | None = typer.Option(None, "--init-weights", help="Pretrained weights file (e.g. an ImageNet ResNet-34 .pth for paratranscnn)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing bundle / start a new run."),
) -> None:
    """Plan, preprocess, train with validation, evaluate held-out cases and save the bundle."""
    from rich.console import Console

    from medpipe.training.config import load_train_config
    from medpipe.training.trainer import train as run_training

    overrides = {
        "model": model.replace("-", "_").lower() if model else None, "epochs": epochs,
        "iters_per_epoch": iters_per_epoch, "patch_size": _ints(patch, "--patch"),
        "spacing": _floats(spacing, "--spacing"), "batch_size": batch_size, "fold": fold,
        "optimizer": optimizer, "lr": lr, "precision": precision, "slices": slices,
        "init_weights": str(init_weights) if init_weights else None,
    }
    cfg = load_train_config(config, overrides)
    result = run_training(dataset, out, cfg, work_dir=work_dir, resume=resume, overwrite=overwrite or resume)
    console = Console()
    console.print(f"bundle: [bold]{result.bundle}[/] ({result.seconds_per_epoch:.1f} s/epoch, work: {result.work_dir})")
    if result.evaluation:
        console.print(f"held-out cases {', '.join(result.val_cases)}: mean Dice {result.evaluation['mean']['dice']}")
