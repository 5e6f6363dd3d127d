"""``medpipe doctor [BUNDLE]``: this machine, and which inference path ``auto`` picks here and why.

Without a bundle: the CPU model and the flags that matter (AVX512, BF16, VNNI, AMX), threads,
GPU, library versions. With one: a synthetic study of the bundle's modality, preprocessed
as the bundle says, and every eligible path timed on two of its tiles (``inference.autotune``;
measured afresh, and the decision cached for later runs).

Example:
    medpipe doctor
    medpipe doctor ct_organs_phantom --json
"""

from __future__ import annotations

import typer

from medpipe.cli.app import app


def _synthetic_study(bundle):
    """A phantom of the bundle's modality on a grid near its training spacing."""
    import numpy as np

    from medpipe.data.phantoms import ct_phantom, mr_brain_phantom
    from medpipe.image import Image

    pre = bundle.config.preprocessing
    if bundle.config.modality == "CT":
        spacing = tuple(float(s) for s in pre.spacing)
        shape = tuple(int(min(max(380 / s, 2 * p), 256)) for s, p in zip(spacing, pre.patch_size, strict=True))
        image, _ = ct_phantom(shape, spacing, seed=0)
    else:
        shape = tuple(int(max(p * 1.5, 32)) for p in pre.patch_size)
        image, _ = mr_brain_phantom(shape, tuple(float(s) for s in pre.spacing), seed=0)
    n = len(bundle.config.channels)
    if n > 1:
        image = Image(np.repeat(image.array, n, axis=0), image.affine, image.meta)
    return image


@app.command("doctor")
def doctor(
    bundle: str | None = typer.Argument(None, help="Bundle (or nnU-Net results folder) to time on this machine."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Print the machine's inference capabilities and, for a bundle, the measured choice of path."""
    import json

    from medpipe.inference.autotune import machine_description

    machine = machine_description(device)
    report: dict = {"machine": machine}
    if bundle is not None:
        from medpipe.errors import BundleError
        from medpipe.inference.bundle_segment import network_input
        from medpipe.inference.sliding_window import tune_paths
        from medpipe.models.bundle import load_bundle
        from medpipe.models.model_ref import resolve_model

        b = load_bundle(resolve_model(bundle))
        if b.config.cascade is not None or b.config.ensemble:
            raise BundleError(f"bundle {b.config.name} is a cascade or an ensemble; doctor times single networks "
                              "(the decision for it is made on its first run)")
        net_in = network_input(_synthetic_study(b), b)
        result = tune_paths(b.build_model(device), net_in.array, b.config.preprocessing.patch_size,
                            num_classes=b.config.num_classes, device=device, int8_model=b.int8_path,
                            use_cache=False)
        report["bundle"] = {"name": b.config.name, "patch": b.config.preprocessing.patch_size, **result.facts()}
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]CPU[/] {machine['cpu']} ({machine['cores']} cores, torch uses {machine['threads']} "
                  f"threads)")
    console.print(f"[bold]flags[/] {' '.join(machine['flags']) or 'none of AVX2/AVX512/AMX'}")
    console.print(f"[bold]libraries[/] torch {machine['torch']}, openvino {machine.get('openvino', 'not installed')}")
    if "gpu" in machine:
        console.print(f"[bold]GPU[/] {machine['gpu']}")
    if bundle is None:
        return
    rep = report["bundle"]
    table = Table(title=f"{rep['name']}: paths timed on 2 tiles of {rep['patch']}", title_justify="left")
    for col in ("path", "s / tile", "agreement", "worst Dice", "verdict"):
        table.add_column(col)
    for m in rep["candidates"]:
        if m.get("error"):
            verdict = f"[red]cannot run[/]: {m['error'][:50]}"
        elif m["candidate"] == rep["choice"]:
            verdict = "[green]chosen[/]"
        elif m["agreement"] < 0.995 or m["worst_class_dice"] < 0.95:
            verdict = "[yellow]refused by the accuracy gate[/]"
        else:
            verdict = "slower"
        secs = "-" if m["seconds_per_tile"] is None else f"{m['seconds_per_tile']:.3f}"
        table.add_row(m["candidate"], secs, f"{m['agreement']:.4f}", f"{m['worst_class_dice']:.3f}", verdict)
    console.print(table)
    console.print(f"auto will run [bold]{rep['choice']}[/] ({rep['reason']}); measuring took "
                  f"{rep['tuning_seconds']:.1f} s, decision cached")
