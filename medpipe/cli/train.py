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

    from medpipe.cli._parse import floats, ints
    from medpipe.training.config import load_train_config
    from medpipe.training.trainer import train as run_training

    overrides = {
        "model": model.replace("-", "_").lower() if model else None, "epochs": epochs,
        "iters_per_epoch": iters_per_epoch, "patch_size": ints(patch, "--patch", also=2),
        "spacing": floats(spacing, "--spacing"), "batch_size": batch_size, "fold": fold,
        "optimizer": optimizer, "lr": lr, "precision": precision, "slices": slices,
        "init_weights": str(init_weights) if init_weights else None,
    }
    cfg = load_train_config(config, overrides)
    result = run_training(dataset, out, cfg, work_dir=work_dir, resume=resume, overwrite=overwrite or resume)
    console = Console()
    console.print(f"bundle: [bold]{result.bundle}[/] ({result.seconds_per_epoch:.1f} s/epoch, work: {result.work_dir})")
    if result.evaluation:
        console.print(f"held-out cases {', '.join(result.val_cases)}: mean Dice {result.evaluation['mean']['dice']}")


@app.command("train-recon")
def train_recon(
    train_dir: Path = typer.Argument(..., help="Folder of fully sampled multi-coil k-space files (medpipe data kspace)."),
    out: Path = typer.Option(..., "-o", "--out", help="Bundle folder to write."),
    val: Path | None = typer.Option(None, "--val", help="Validation k-space folder (SSIM/PSNR/NMSE during training)."),
    test: Path | None = typer.Option(None, "--test", help="Held-out k-space folder evaluated into the bundle."),
    model: str | None = typer.Option(None, "--model", help="cirim (default), cirim_8, rim, rim_mgu or rim_indrnn."),
    hidden: int | None = typer.Option(None, "--hidden", help="Hidden channels (published: 64)."),
    cascades: int | None = typer.Option(None, "--cascades", help="Cascades (CIRIM: 5 to 8)."),
    steps: int | None = typer.Option(None, "--steps", help="Time steps per cascade (published: 8)."),
    iterations: int | None = typer.Option(None, "--iterations", help="Training iterations."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Samples per iteration."),
    crop_rows: int | None = typer.Option(None, "--crop-rows", help="Readout rows per training crop (0 = full)."),
    lr: float | None = typer.Option(None, "--lr", help="Adam learning rate (cosine decay)."),
    max_minutes: float | None = typer.Option(None, "--max-minutes", help="Stop (and still write the bundle) after this long."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for training (0 = torch's default)."),
    config: Path | None = typer.Option(None, "--config", help="YAML with a training: section (CLI options override it)."),
    name: str | None = typer.Option(None, "--name", help="Bundle name (default: the config's, else the folder's)."),
    work_dir: Path | None = typer.Option(None, "--work-dir", help="Checkpoints folder (default BUNDLE.work)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from WORK_DIR/checkpoint_latest.pt."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing bundle / start a new run."),
) -> None:
    """Train a RIM/CIRIM reconstruction bundle (masks drawn per sample, validation SSIM, held-out evaluation)."""
    import yaml
    from pydantic import ValidationError
    from rich.console import Console

    from medpipe.errors import InputError
    from medpipe.training.recon import ReconTrainConfig
    from medpipe.training.recon import train_recon as run

    raw: dict = {}
    if config is not None:
        if not config.is_file():
            raise InputError(f"training config {config} does not exist")
        raw = dict((yaml.safe_load(config.read_text()) or {}).get("training", {}))
    arch = dict(raw.pop("arch", {}) or {})
    for key, value in (("hidden", hidden), ("cascades", cascades), ("steps", steps)):
        if value is not None:
            arch[key] = value
    given = {"model": model.replace("-", "_").lower() if model else None, "iterations": iterations,
             "batch_size": batch_size, "crop_rows": crop_rows, "lr": lr, "max_minutes": max_minutes,
             "threads": threads}
    if given["model"] and given["model"] != raw.get("model", given["model"]):
        # the config's name and description speak of its own model, not this one
        raw.pop("name", None)
        raw.pop("description", None)
    given["name"] = name
    raw.update({k: v for k, v in given.items() if v is not None})
    if arch:
        raw["arch"] = arch
    try:
        cfg = ReconTrainConfig(**raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InputError(f"training setting {'.'.join(map(str, err['loc']))}: {err['msg']}") from exc
    result = run(train_dir, out, cfg, val_dir=val, test_dir=test, work_dir=work_dir, resume=resume,
                 overwrite=overwrite or resume)
    console = Console()
    console.print(f"bundle: [bold]{result.bundle}[/] ({result.iterations} iterations in {result.seconds / 60:.1f} min)")
    for key, v in (result.evaluation or {}).items():
        console.print(f"  held-out {key}: SSIM {v['ssim']:.4f}  PSNR {v['psnr']:.2f} dB  NMSE {v['nmse']:.4f}")
