"""``medpipe models``: list registered architectures, show a bundle, import nnU-Net results.

``medpipe models`` alone lists the registry (a Typer group whose callback runs when no
subcommand is given); ``show``, ``import-nnunet`` and ``quantize`` are its subcommands.

Example:
    medpipe models --json --classes 105
    medpipe models show bundles/abdomen-ct
    medpipe models import-nnunet nnUNet_results/Dataset104/STUNetTrainer_small__nnUNetPlans__3d_fullres \
        bundles/hecktor --fold all
    medpipe models quantize bundles/abdomen-ct bundles/abdomen-ct-int8 --calibration ct1.nii.gz \
        --calibration ct2.nii.gz --calibration study3/
"""

from __future__ import annotations

from pathlib import Path

import typer

from medpipe.cli.app import app

models_app = typer.Typer(invoke_without_command=True, no_args_is_help=False,
                         help="Model architectures (registry) and model bundles.")
app.add_typer(models_app, name="models")


@models_app.callback()
def models(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of {name, family, dims, params}."),
    in_channels: int = typer.Option(1, "--in-channels", min=1, help="Input channels used for the counts."),
    classes: int = typer.Option(2, "--classes", min=1, help="Output classes used for the counts."),
    pattern: str = typer.Option("*", "--filter", help="Shell pattern on names, e.g. 'stunet*'."),
) -> None:
    """List every registered model with its parameter count (built on the meta device)."""
    if ctx.invoked_subcommand is not None:
        return
    import json

    from medpipe.models import list_models, model_info

    infos = sorted((model_info(n, in_channels=in_channels, num_classes=classes) for n in list_models(pattern)),
                   key=lambda i: (i.family, i.params))
    if as_json:
        typer.echo(json.dumps([i.as_dict() for i in infos], indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"registered models ({in_channels} input channel(s), {classes} classes)",
                  title_justify="left")
    for col, just in (("name", "left"), ("family", "left"), ("dims", "right"), ("params", "right")):
        table.add_column(col, justify=just)
    for i in infos:
        table.add_row(i.name, i.family, f"{i.dims}D", f"{i.params / 1e6:,.2f} M")
    Console().print(table)


@models_app.command("show")
def show(bundle: Path = typer.Argument(..., help="Bundle folder (model.yaml + weights.safetensors)."),
         as_json: bool = typer.Option(False, "--json", help="Print model.yaml as JSON plus the parameter count.")
         ) -> None:
    """Summarise a bundle: architecture, parameters, labels, preprocessing."""
    import json

    from medpipe.models import model_info
    from medpipe.models.bundle import load_bundle

    b = load_bundle(bundle)
    cfg = b.config
    extra = {k: v for k, v in cfg.arch_config.items() if k not in ("in_channels", "num_classes")}
    params = model_info(cfg.architecture, **cfg.arch_config).params
    if as_json:
        typer.echo(json.dumps(cfg.model_dump(mode="json") | {"params": params}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{cfg.name}[/bold] {cfg.version} — {cfg.description or 'no description'}")
    console.print(f"  architecture  {cfg.architecture} ({params / 1e6:,.2f} M params)"
                  + (f" {extra}" if extra else ""))
    console.print(f"  modality      {cfg.modality}, channels {', '.join(cfg.channels)}")
    if cfg.task == "recon":  # k-space in, image out: no labels or preprocessing
        for key, value in (cfg.recon or {}).items():
            console.print(f"  {key:<13} {value}")
        for key, value in ((cfg.evaluation or {}).get("per_mask") or {}).items():
            console.print(f"  held-out {key}: SSIM {value.get('ssim')}, PSNR {value.get('psnr')}, NMSE {value.get('nmse')}")
        return
    pre = cfg.preprocessing
    norm = pre.normalization
    console.print(f"  orientation   {pre.orientation}, spacing {pre.spacing} mm, patch {pre.patch_size}")
    stats = ", ".join(f"{k} {v}" for k, v in (("clip", norm.clip and list(norm.clip)), ("mean", norm.mean),
                                                ("std", norm.std)) if v is not None)
    console.print(f"  normalisation {norm.scheme}" + (f" ({stats})" if stats else ""))
    console.print(f"  TTA mirror    {pre.tta_axes or 'off'}, crop foreground {pre.crop_foreground}")
    q = cfg.quantization
    console.print("  int8 model    " + (f"{q.folder}/ (agreement with fp32 {q.agreement:.2%}, worst structure Dice "
                                       f"{q.worst_class_dice:.3f}, "
                                       f"{q.calibration.get('attempt', '')})" if q else "none"))
    table = Table(title="labels", title_justify="left")
    for col in ("id", "name", "colour"):
        table.add_column(col)
    for idx, lab in sorted(cfg.labels.items()):
        r, g, bl = lab.color
        table.add_row(str(idx), lab.name, f"[rgb({r},{g},{bl})]■[/] {r},{g},{bl}")
    console.print(table)


@models_app.command("import-nnunet")
def import_nnunet_cmd(
    results_dir: Path = typer.Argument(..., help="nnU-Net v2 trainer folder with plans.json, dataset.json, fold_X/."),
    out_bundle: Path = typer.Argument(..., help="Bundle folder to create."),
    fold: list[str] = typer.Option([], "--fold", "-f",
                                   help="Fold to import (repeat for an ensemble; 'all' for fold_all). "
                                        "Default: every fold present, averaged as nnU-Net does."),
    checkpoint: str = typer.Option("final", "--checkpoint", "-chk", help="final or best."),
    lowres: Path | None = typer.Option(None, "--lowres",
                                       help="For a 3d_cascade_fullres model: the 3d_lowres results folder of its "
                                            "first stage."),
    name: str | None = typer.Option(None, "--name", help="Bundle name (default: the dataset name)."),
    modality: str | None = typer.Option(None, "--modality", help="CT or MR (default: from the plans)."),
    orientation: str = typer.Option("native", "--orientation",
                                    help="native (nnU-Net's behaviour: the file's voxel order) or the orientation "
                                         "code the training images were stored in (RAS for TotalSegmentator)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing bundle folder."),
) -> None:
    """Convert a trained nnU-Net v2 results folder (PlainConvUNet, ResEnc, STU-Net) into a medpipe bundle."""
    from medpipe.errors import InputError
    from medpipe.models.nnunet_import import import_nnunet, import_nnunet_cascade

    for f in fold:
        if f != "all" and not f.isdigit():
            raise InputError(f"--fold must be 'all' or a fold number, got {f!r}")
    folds = [f if f == "all" else int(f) for f in fold] or None
    kw = dict(checkpoint=checkpoint, name=name, modality=modality, orientation=orientation, overwrite=overwrite)
    if lowres is not None:
        b = import_nnunet_cascade(lowres, results_dir, out_bundle, fold=folds, **kw)
    else:
        b = import_nnunet(results_dir, out_bundle, folds, **kw)
    members = 1 + len(b.config.ensemble)
    typer.echo(f"wrote bundle {b.path} ({b.config.architecture}, {b.config.num_classes} outputs, "
               f"{members} fold(s), mirroring {b.config.preprocessing.tta_axes or 'off'})")


@models_app.command("quantize")
def quantize_cmd(
    bundle: Path = typer.Argument(..., help="Bundle to quantise (left untouched)."),
    out_bundle: Path = typer.Argument(..., help="New bundle folder: the same bundle plus its int8 model."),
    calibration: list[Path] = typer.Option(..., "--calibration", "-c",
                                           help="Calibration image (NIfTI/NRRD/MHA file or DICOM series folder); "
                                                "repeat. With 2+, a third is held out for validation."),
    min_agreement: float = typer.Option(0.995, "--min-agreement", min=0.0, max=1.0,
                                        help="Gate: fraction of voxels whose int8 label must equal fp32's, on "
                                             "every validation volume."),
    min_class_dice: float = typer.Option(0.95, "--min-class-dice", min=0.0, max=1.0,
                                         help="Gate: Dice between int8 and fp32 labels of every structure of "
                                              ">= 1000 voxels, on every validation volume."),
    max_patches: int = typer.Option(64, "--max-patches", min=1, help="Calibration patches (spread over the tiles)."),
    max_restored: int = typer.Option(12, "--max-restored", min=0,
                                     help="Layer groups accuracy control may keep in fp32 when the plain attempts miss "
                                          "the gate (each costs speed; 0 = no accuracy control)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT_BUNDLE if it exists."),
) -> None:
    """Make an int8 OpenVINO model of a bundle (post-training quantisation) and keep it only if its
    labels agree with fp32 on >= --min-agreement of the voxels and every structure keeps a Dice
    >= --min-class-dice; 'auto' precision then runs it."""
    from rich.console import Console
    from rich.table import Table

    from medpipe.inference.quantize import quantize_bundle

    console = Console()
    b, report = quantize_bundle(bundle, calibration, out_bundle, min_agreement=min_agreement,
                                min_class_dice=min_class_dice, max_patches=max_patches,
                                max_restored=max_restored, overwrite=overwrite, log=console.print)
    table = Table(title="int8 vs fp32 on the validation volumes", title_justify="left")
    for col in ("volume", "agreement", "worst structure Dice", "fp32 s", "int8 s"):
        table.add_column(col)
    for row in report.attempts[-1]["volumes"]:
        worst = min(((c, d) for c, d in row["dice_vs_fp32"].items() if c in row["gated_classes"]),
                    key=lambda kv: kv[1], default=None)
        table.add_row(row["volume"], f"{row['agreement']:.4%}",
                      f"{b.config.labels[worst[0]].name} {worst[1]:.4f}" if worst else "-",
                      f"{row['fp32_seconds']:.1f}", f"{row['int8_seconds']:.1f}")
    console.print(table)
    typer.echo(f"wrote bundle {b.path} with an int8 model ({report.attempt}; agreement {report.agreement:.4%}, "
               f"worst structure Dice {report.worst_class_dice:.4f}; "
               f"{len(report.attempts[-1]['kept_fp32'])} convolution(s) kept in fp32)")
