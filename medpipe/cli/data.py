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
    shape: str = typer.Option("", "--shape", help="Voxels per case as I,J,K (default: the modality's)."),
    spacing: str = typer.Option("", "--spacing", help="Voxel size in mm as I,J,K, jittered +-10 %% per case."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace DIR if it exists."),
) -> None:
    """Write a varied phantom dataset: dataset.json, imagesTr/, labelsTr/, preview.png."""
    from rich.console import Console

    from medpipe.cli._parse import floats, ints
    from medpipe.data.nnunet_dataset import write_phantom_dataset

    info = write_phantom_dataset(out, cases, seed=seed, modality=modality, overwrite=overwrite,
                                 shape=tuple(ints(shape, "--shape")) if shape else None,
                                 spacing=tuple(floats(spacing, "--spacing", 3)) if spacing else None)
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


@data_app.command("kspace")
def kspace(
    out: Path = typer.Argument(..., help="Folder to write <source>_<seed>.h5 into."),
    source: str = typer.Option("phantom", "--source", help="phantom, mni152, colin27, itk_t1, itk_complex or inia19."),
    slices: int = typer.Option(16, "--slices", "-n", help="Slices to take from the source volume."),
    coils: int = typer.Option(8, "--coils", help="Receive coils (birdcage sensitivities)."),
    matrix: int = typer.Option(256, "--matrix", help="Square matrix (1 mm pixels)."),
    snr: str = typer.Option("30", "--snr", help="SNR (mean object signal / noise sigma), or a range low,high."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed writes the same file."),
    augment: bool = typer.Option(False, "--augment", help="Random rotation/scale/flip/gamma per slice (training data)."),
    planes: str = typer.Option("axial", "--planes", help="Comma-separated: axial, coronal, sagittal."),
    copies: int = typer.Option(1, "--copies", help="Draw each slice this many times (augmented differently)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the file if it exists."),
) -> None:
    """Simulate fully sampled multi-coil k-space (smooth phase, birdcage coils, noise) from brain MRI."""
    from rich.console import Console

    from medpipe.data.kspace_dataset import write_kspace_volume
    from medpipe.errors import InputError

    try:
        levels = [float(v) for v in snr.split(",")]
    except ValueError as exc:
        raise InputError(f"--snr must be a number or low,high, got {snr!r}") from exc
    plane_list = tuple(p.strip() for p in planes.split(",") if p.strip())
    bad = [p for p in plane_list if p not in ("axial", "coronal", "sagittal")]
    if bad or not plane_list:
        raise InputError(f"--planes takes axial, coronal and/or sagittal, got {planes!r}")
    info = write_kspace_volume(out, source, slices=slices, coils=coils, matrix=matrix,
                               snr=(levels[0], levels[-1]), seed=seed, augment=augment, planes=plane_list,
                               copies=copies, overwrite=overwrite)
    Console().print(f"wrote {info['slices']} slices x {info['coils']} coils ({info['matrix']}^2) to [bold]{info['file']}[/]")


@data_app.command("mri-brain")
def mri_brain(
    out: Path = typer.Argument(..., help="Folder to write the k-space studies mri_0.h5 ... into."),
    studies: int = typer.Option(4, "--studies", "-n", help="How many studies."),
    broken: int = typer.Option(0, "--broken", help="Make the last N studies unusable (to see how a batch copes)."),
    broken_kind: str = typer.Option("truncated", "--broken-kind", help="truncated (a cut-off file) or coils (12 coils)."),
    matrix: int = typer.Option(192, "--matrix", help="Square in-plane matrix."),
    pixel_mm: float = typer.Option(1.0, "--pixel-mm", help="In-plane pixel size (mm; the CIRIM bundle's is 1)."),
    slices: int = typer.Option(52, "--slices", help="Contiguous axial slices."),
    slice_mm: float = typer.Option(3.0, "--slice-mm", help="Slice thickness = spacing (mm)."),
    coils: int = typer.Option(8, "--coils", help="Receive coils (the shipped CIRIM bundle wants 8)."),
    snr: float = typer.Option(30.0, "--snr", help="Mean brain signal / noise sigma."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first study; the same seed writes the same files."),
    truth: Path | None = typer.Option(None, "--truth", help="Folder for the truth labels (default OUT_truth beside OUT)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files that exist."),
) -> None:
    """Simulate whole-brain multi-coil k-space studies (real T1 brains, warped, with a lesion) and their truth."""
    from rich.console import Console

    from medpipe.data.mri_brain_studies import write_mri_brain_studies

    rows = write_mri_brain_studies(out, studies, broken=broken, broken_kind=broken_kind, seed=seed, truth_dir=truth,
                                   overwrite=overwrite, matrix=matrix, pixel_mm=pixel_mm, slices=slices,
                                   slice_mm=slice_mm, coils=coils, snr=snr)
    console = Console()
    for r in rows:
        note = f"[red]broken: {r['broken']}[/]" if r["broken"] else f"lesion {r['lesion_ml']:.1f} ml, truth {r['truth']}"
        console.print(f"  {r['file']}  {r['source']:<8} {'x'.join(map(str, r['shape']))}  {note}")
