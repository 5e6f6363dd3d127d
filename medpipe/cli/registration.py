"""``medpipe train-registration FOLDER -o BUNDLE`` and ``medpipe register FIXED MOVING -o OUT``.

Examples:
    medpipe train-registration brains/ -o bundles/my_micdir --atlas mni152.nii.gz --epochs 20
    medpipe register subject.nii.gz atlas.nii.gz -o out/ --method micdir --labels atlas_labels.nii.gz
"""

from __future__ import annotations

from pathlib import Path

import typer

from medpipe.cli.app import app


@app.command("train-registration")
def train_registration_cmd(
    folder: Path = typer.Argument(..., help="Folder of 3D images of one modality (labels/ with the same names: optional)."),
    out: Path = typer.Option(..., "-o", "--out", help="Bundle folder to write."),
    model: str = typer.Option("micdir", "--model", help="micdir or voxelmorph."),
    atlas: str | None = typer.Option(None, "--atlas", help="File name of the atlas image in FOLDER (atlas mode)."),
    spacing: float = typer.Option(2.0, "--spacing", help="Working spacing in mm."),
    grid: str = typer.Option("96,96,96", "--grid", help="Working grid shape at that spacing."),
    crop: str = typer.Option("48,48,48", "--crop", help="Training crop shape."),
    epochs: int = typer.Option(20, "--epochs"),
    iters_per_epoch: int = typer.Option(25, "--iters-per-epoch"),
    lr: float = typer.Option(1e-3, "--lr"),
    time_budget: float | None = typer.Option(None, "--time-budget", help="Stop after this many minutes."),
    threads: int = typer.Option(1, "--threads", help="torch threads (1 is fastest on a busy 2-core machine)."),
    modality: str = typer.Option("MR", "--modality"),
    config: Path | None = typer.Option(None, "--config", help="YAML with a training: section (options override it)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from BUNDLE.work/checkpoint_latest.pt."),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Train MICDIR (or the VoxelMorph baseline) on random pairs + synthetic warps; save a bundle."""
    import yaml
    from rich.console import Console

    from medpipe.cli._parse import ints
    from medpipe.errors import InputError
    from medpipe.registration.training import RegTrainConfig, train_registration

    base = {}
    if config is not None:
        try:
            base = dict((yaml.safe_load(config.read_text()) or {}).get("training") or {})
        except (OSError, yaml.YAMLError) as exc:
            raise InputError(f"--config {config} could not be read: {exc}") from exc
    base.update(model=model.replace("-", "_").lower(), spacing=spacing, grid=ints(grid, "--grid"),
                crop=ints(crop, "--crop"), epochs=epochs, iters_per_epoch=iters_per_epoch, lr=lr, threads=threads,
                modality=modality.upper(), name=base.get("name") or out.name)
    if atlas:
        base["atlas"] = atlas
    if time_budget:
        base["time_budget_minutes"] = time_budget
    try:
        cfg = RegTrainConfig.model_validate(base)
    except Exception as exc:
        raise InputError(f"invalid training settings: {str(exc).splitlines()[:3]}") from exc
    res = train_registration(folder, out, cfg, resume=resume, overwrite=overwrite or resume)
    last = res.log[-1]
    Console().print(f"bundle: [bold]{res.bundle}[/] ({res.seconds / 60:.1f} min); validation Dice "
                    f"{last['val_dice']}, folding {last['val_folding_pct']}%, EPE {last['val_epe_mm']} mm")


@app.command("register")
def register_cmd(
    fixed: Path = typer.Argument(..., help="Fixed image (NIfTI/NRRD/MHA or a DICOM folder)."),
    moving: Path = typer.Argument(..., help="Moving image, registered onto the fixed grid."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder (field.nii.gz, warped.nii.gz, report.json)."),
    method: str = typer.Option("micdir", "--method", help="micdir, voxelmorph, demons, bspline or affine."),
    bundle: str | None = typer.Option(None, "--bundle", help="Registration bundle (micdir default: brain_micdir)."),
    labels: Path | None = typer.Option(None, "--labels", help="Moving label map to propagate onto the fixed grid."),
    refine: int | None = typer.Option(None, "--refine", help="Instance-optimisation iterations (default: bundle's)."),
    engine: str = typer.Option("auto", "--engine", help="Network engine: auto (OpenVINO when installed), torch, openvino."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 or bf16 (OpenVINO's inference precision)."),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Register MOVING onto FIXED; write the displacement field (ITK/Slicer readable) and the warped image."""
    import json

    from rich.console import Console

    from medpipe.io.atomic import atomic_dir
    from medpipe.io.dicom import read_image
    from medpipe.io.volumes import read_volume
    from medpipe.registration.field import warp_image
    from medpipe.registration.register import register

    f_img, m_img = read_image(fixed), read_image(moving)
    lab = read_volume(labels, is_label=True) if labels else None
    res = register(f_img, m_img, method, bundle=bundle, refine_iterations=refine, engine=engine, precision=precision)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        res.field.save(tmp / "field.nii.gz")
        res.warped.save(tmp / "warped.nii.gz")
        if lab is not None:
            warp_image(lab, res.field).save(tmp / "labels.nii.gz")
        (tmp / "report.json").write_text(json.dumps({"method": method, "seconds": res.seconds, "facts": res.facts,
                                                     "affine": res.affine.tolist()}, indent=2, default=str))
    Console().print(f"{method}: {res.total_seconds:.1f} s; wrote {out}/field.nii.gz, warped.nii.gz"
                    + (", labels.nii.gz" if lab is not None else ""))
