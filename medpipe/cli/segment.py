"""``medpipe segment INPUT OUTPUT``: the command a TotalSegmentator user expects.

A thin front door over the pipeline machinery: it builds a small pipeline (load →
segment_bundles → [statistics] → [preview] → write), runs it with the same runner as
``medpipe run`` in a scratch run folder next to OUTPUT, and moves the results into place
all at once. The model may be a bundle, a shipped bundle name or an nnU-Net v2 results
folder (imported on first use); several ``--model`` are run in order and merged by name.

Example:
    medpipe segment ct.nii.gz segs/                          # one file per structure
    medpipe segment dicom_folder/ organs.nii.gz --ml --statistics --preview
    medpipe segment study.zip seg.dcm --ml --model ~/nnUNet_results/Dataset291/...__3d_fullres
    medpipe segment ct.nii.gz liver/ --roi-subset liver,spleen --fast
"""

from __future__ import annotations

from pathlib import Path

import typer

from medpipe.cli.app import app

_ML_SUFFIXES = {".nii.gz": "nifti", ".nii": "nifti", ".nrrd": "nrrd", ".dcm": "dicom_seg"}
DEFAULT_MODEL = "ct_organs_phantom"


def _output_kind(output: Path, multilabel: bool) -> tuple[str, str]:
    """(format, file stem) for OUTPUT; with --ml it is a file whose suffix says the format."""
    from medpipe.errors import InputError

    name = output.name.lower()
    suffix = next((s for s in _ML_SUFFIXES if name.endswith(s)), None)
    if multilabel:
        if suffix is None:
            raise InputError(f"with --ml, OUTPUT must be a file ending in {', '.join(_ML_SUFFIXES)}, got {output}")
        return _ML_SUFFIXES[suffix], output.name[: -len(suffix)]
    if suffix is not None:
        raise InputError(f"OUTPUT {output} looks like a file; one file per structure needs a folder (or pass --ml)")
    return "nifti", "structures"


def _spec(models: list[str], fmt: str, stem: str, multilabel: bool, labels: list[str] | None, fast: bool,
          tta: bool, statistics: bool, preview: bool, modality: str | None) -> dict:
    load = {"largest": True} | ({"modality": modality} if modality else {})
    segment = {"bundles": models, "tta": tta and not fast} | ({"labels": labels} if labels else {})
    if fast:
        segment["overlap"] = 0.25  # fewer, less overlapping tiles: about half the forward passes
    stages = {
        "load": {"kind": "load_study", "params": load, "inputs": {"study": "input.study"}},
        "segment": {"kind": "segment_bundles", "params": segment, "inputs": {"image": "load.image"}},
        "write": {"kind": "write", "params": {"formats": [fmt], "required": [fmt], "name": stem,
                                              "split": not multilabel},
                  "inputs": {"labels": "segment.labels", "source": "load.source", "reference": "load.image"}},
    }
    outputs = ["write.files"]
    if statistics:
        stages["statistics"] = {"kind": "statistics", "inputs": {"labels": "segment.labels", "image": "load.image"}}
        outputs.append("statistics.table")
    if preview:
        stages["preview"] = {"kind": "preview", "inputs": {"labels": "segment.labels", "image": "load.image"}}
        outputs.append("preview.files")
    return {"name": "segment", "description": "medpipe segment (built from the command line)", "stages": stages,
            "outputs": outputs}


@app.command("segment")
def segment_command(
    input_path: Path = typer.Argument(..., metavar="INPUT", help="A DICOM folder or zip, or a NIfTI/NRRD file."),
    output: Path = typer.Argument(..., metavar="OUTPUT",
                                  help="A folder (one file per structure) or, with --ml, one file "
                                       "(.nii.gz, .nrrd or .dcm for DICOM SEG)."),
    model: list[str] = typer.Option([], "--model", "-m",
                                    help="Bundle folder, shipped bundle name or nnU-Net v2 results folder; repeat to "
                                         "run several and merge their structures (default: the shipped CT bundle)."),
    multilabel: bool = typer.Option(False, "--ml", help="One multi-label file instead of one file per structure."),
    roi_subset: str = typer.Option("", "--roi-subset",
                                   help="Only these structures, e.g. liver,spleen (models without any are skipped)."),
    fast: bool = typer.Option(False, "--fast", help="Fewer, less overlapping tiles and no mirroring: faster, a "
                                                    "little less accurate at tile borders."),
    tta: bool = typer.Option(False, "--tta", help="Test-time mirroring over the model's allowed axes (slower)."),
    statistics: bool = typer.Option(False, "--statistics", help="Also write statistics.json (volume, mean "
                                                                "intensity per structure)."),
    preview: bool = typer.Option(False, "--preview", help="Also write preview.png (overlays)."),
    modality: str | None = typer.Option(None, "--modality", help="Series to pick from a DICOM study (CT, MR)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUTPUT if it exists."),
) -> None:
    """Segment INPUT with one or more models and write the structures to OUTPUT (TotalSegmentator-style)."""
    import json
    import shutil
    import tempfile

    from rich.console import Console

    from medpipe.errors import InputError, PipelineError
    from medpipe.io.atomic import atomic_dir, atomic_path, check_writable
    from medpipe.pipeline.runner import run_pipeline
    from medpipe.pipeline.spec import parse_pipeline

    if not input_path.exists():
        raise InputError(f"input {input_path} does not exist")
    check_writable(output, overwrite)
    fmt, stem = _output_kind(output, multilabel)
    labels = [s.strip() for s in roi_subset.split(",") if s.strip()] or None
    spec = parse_pipeline(_spec(model or [DEFAULT_MODEL], fmt, stem, multilabel, labels, fast, tta, statistics,
                                preview, modality), source="medpipe segment")
    console = Console(stderr=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".medpipe-segment-", dir=output.parent) as scratch:
        with console.status(f"segmenting {input_path.name} ..."):
            result = run_pipeline(spec, input_path, scratch, device=device, study_name="study")
        if not result.ok:
            raise PipelineError(f"{input_path}: {result.error}")
        run_dir = Path(scratch) / "study"
        record = json.loads((run_dir / "run.json").read_text())
        written = run_dir / "artifacts" / "write" / "files.files"
        produced = written / (f"{stem}{next(s for s, f in _ML_SUFFIXES.items() if f == fmt)}" if multilabel else stem)
        extras = []
        if statistics:
            extras.append(("statistics.json", run_dir / "artifacts" / "statistics" / "table.json"))
        if preview:
            extras.append(("preview.png", run_dir / "artifacts" / "preview" / "files.files" / "preview.png"))
        if multilabel:
            with atomic_path(output, overwrite=overwrite) as tmp:
                shutil.copy2(produced, tmp)
            for name, src in extras:
                with atomic_path(output.parent / f"{stem}_{name}", overwrite=True) as tmp:
                    shutil.copy2(src, tmp)
        else:
            with atomic_dir(output, overwrite=overwrite) as tmp:
                shutil.copytree(produced, tmp, dirs_exist_ok=True)
                for name, src in extras:
                    shutil.copy2(src, tmp / name)
                shutil.copy2(run_dir / "run.json", tmp / "run.json")
    facts = record["stages"]["segment"].get("facts", {}).get("segment", {})
    for w in result.warnings:
        console.print(f"[yellow]warning[/] {w}")
    console.print(f"wrote {output} ({facts.get('structures', '?')} structures, {result.duration_s:.1f} s)")
