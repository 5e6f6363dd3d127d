"""``medpipe models``: list registered architectures, show a bundle, import nnU-Net results.

``medpipe models`` alone lists the registry (a Typer group whose callback runs when no
subcommand is given); ``show`` and ``import-nnunet`` are its subcommands.

Example:
    medpipe models --json --classes 105
    medpipe models show bundles/abdomen-ct
    medpipe models import-nnunet nnUNet_results/Dataset104/STUNetTrainer_small__nnUNetPlans__3d_fullres \
        bundles/hecktor --fold all
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

    pre = cfg.preprocessing
    norm = pre.normalization
    console = Console()
    console.print(f"[bold]{cfg.name}[/bold] {cfg.version} — {cfg.description or 'no description'}")
    console.print(f"  architecture  {cfg.architecture} ({params / 1e6:,.2f} M params)"
                  + (f" {extra}" if extra else ""))
    console.print(f"  modality      {cfg.modality}, channels {', '.join(cfg.channels)}")
    console.print(f"  orientation   {pre.orientation}, spacing {pre.spacing} mm, patch {pre.patch_size}")
    stats = ", ".join(f"{k} {v}" for k, v in (("clip", norm.clip and list(norm.clip)), ("mean", norm.mean),
                                                ("std", norm.std)) if v is not None)
    console.print(f"  normalisation {norm.scheme}" + (f" ({stats})" if stats else ""))
    console.print(f"  TTA mirror    {pre.tta_axes or 'off'}, crop foreground {pre.crop_foreground}")
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
    fold: str = typer.Option("all", "--fold", help="Fold to import: 'all' or a number."),
    name: str | None = typer.Option(None, "--name", help="Bundle name (default: the dataset name)."),
    modality: str | None = typer.Option(None, "--modality", help="CT or MR (default: from the plans)."),
    orientation: str = typer.Option("RAS", "--orientation", help="Voxel orientation of the training images."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing bundle folder."),
) -> None:
    """Convert a trained STU-Net nnU-Net v2 results folder into a medpipe bundle."""
    from medpipe.errors import InputError
    from medpipe.models.nnunet_import import import_nnunet

    if fold != "all" and not fold.isdigit():
        raise InputError(f"--fold must be 'all' or a fold number, got {fold!r}")
    b = import_nnunet(results_dir, out_bundle, fold if fold == "all" else int(fold), name=name,
                      modality=modality, orientation=orientation, overwrite=overwrite)
    typer.echo(f"wrote bundle {b.path} ({b.config.architecture}, {b.config.num_classes} classes)")
