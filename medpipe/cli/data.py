"""``medpipe data``: synthetic data to try medpipe on without patient data.

``medpipe data phantoms DIR`` writes an nnU-Net v2 training set of varied phantoms;
``medpipe data example DIR`` writes the built-in example DICOM study.
"""

from __future__ import annotations

from pathlib import Path

import typer

from medpipe.cli.app import app

data_app = typer.Typer(
    help="Synthetic data: phantom training sets and the example DICOM study.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")


@data_app.command("phantoms")
def phantoms(
    out: Path = typer.Argument(..., help="Dataset folder to create (nnU-Net v2 layout)."),
    cases: int = typer.Option(10, "--cases", "-n", help="Number of training cases."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed writes the same dataset."),
    modality: str = typer.Option("ct", "--modality", help="ct (abdomen organs), mr (brain tissues) or brats (T1/T1c/T2/FLAIR glioma, BraTS labels)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace DIR if it exists."),
) -> None:
    """Write a varied phantom dataset: dataset.json, imagesTr/, labelsTr/, preview.png."""
    from rich.console import Console

    from medpipe.data.nnunet_dataset import write_phantom_dataset

    info = write_phantom_dataset(out, cases, seed=seed, modality=modality, overwrite=overwrite)
    labels = ", ".join(k for k in info["dataset_json"]["labels"] if k != "background")
    Console().print(f"wrote {len(info['cases'])} cases to [bold]{out}[/] (labels: {labels}); preview: {out / 'preview.png'}")


@data_app.command("example")
def example(
    out: Path = typer.Argument(..., help="Study folder to create."),
    seed: int = typer.Option(0, "--seed", help="Seed for the phantom and the UIDs."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace DIR if it exists."),
) -> None:
    """Write the example DICOM study (axial CT, coronal reformat, text SR, README, ground truth)."""
    from rich.console import Console

    from medpipe.data.dicom_writer import write_dicom_study

    info = write_dicom_study(out, seed=seed, overwrite=overwrite)
    console = Console()
    console.print(f"wrote example study to [bold]{out}[/] (StudyInstanceUID {info['study_uid']})")
    for s in info["series"]:
        console.print(f"  series {s['number']:>3}  {s['modality']:<3} {s['description']:<24} {len(s['files'])} file(s)")
    console.print(f"  ground truth: {info['labels_file']}")
