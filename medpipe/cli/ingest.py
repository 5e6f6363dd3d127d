"""``medpipe inspect`` and ``medpipe convert``: look at a study, turn series into volumes.

Example:
    medpipe inspect /data/study42
    medpipe convert /data/study42 out/ --modality CT --min-slices 50 --format nifti
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer

from medpipe.cli.app import app

_FORMATS = {"nifti": ".nii.gz", "nrrd": ".nrrd"}


@app.command()
def inspect(
    study: Path = typer.Argument(..., help="DICOM folder, file, zip archive or DICOMDIR."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead of tables."),
) -> None:
    """List every series (size, spacing, orientation, warnings) and the non-image objects."""
    import json

    from medpipe.io.dicom import scan_study

    scan = scan_study(study, progress=not as_json)
    if not scan.series and not scan.non_image:
        scan.require_images()
    if as_json:
        typer.echo(json.dumps(scan.to_dict(), indent=2))
        return
    _print_scan(scan)


_ORIENT = {"axial": "ax", "sagittal": "sag", "coronal": "cor", "oblique": "obl"}


def _print_scan(scan, console=None) -> None:
    """One line per series whatever the terminal width (80 columns included): short columns,
    the description cut with an ellipsis, notes as numbered lines under the table."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    table = Table(title=f"{escape(str(scan.root))}: {len(scan.series)} image series", title_justify="left",
                  pad_edge=False, collapse_padding=True)
    widths = {"#": 4, "mod": 4, "description": None, "size": 11, "spacing mm": 14, "ori": 3, "uid": 6, "note": 4}
    for col, width in widths.items():
        table.add_column(col, no_wrap=True, overflow="ellipsis", max_width=width,
                         ratio=1 if width is None else None, min_width=8 if width is None else None)
    notes: list[str] = []
    for s in scan.series:
        marks = []
        for text, style in [(p, "red") for p in s.fatal + s.problems] + [(w, "yellow") for w in s.warnings]:
            notes.append(f"[{style}]\\[{len(notes) + 1}][/{style}] #{s.series_number if s.series_number is not None else '?'} "
                         f"{escape(s.description)[:30]}: {escape(text)}")
            marks.append(str(len(notes)))
        table.add_row(
            "" if s.series_number is None else str(s.series_number),
            escape(s.modality),
            escape(s.description),
            "x".join(str(v) for v in s.size),
            "x".join(f"{v:.3g}" for v in s.spacing),
            _ORIENT.get(s.orientation, s.orientation[:3]),
            escape(s.uid_suffix[-6:]),
            ",".join(marks),
        )
    console.print(table)
    for line in notes:
        console.print(line, overflow="fold")
    if scan.non_image:
        console.print(f"non-image objects (not loaded): {len(scan.non_image)}")
        for o in scan.non_image:
            console.print(f"  {escape(o.modality)} {escape(o.sop_class_name)} '{escape(o.description)}' "
                          f"{escape(o.file)}", overflow="fold")
    console.print(f"{scan.skipped} non-DICOM file(s) skipped; --json for every field")
    for f, why in scan.errors:
        console.print(f"[red]unreadable:[/red] {escape(f)} {escape(why)}", overflow="fold")


def _stem_for(info, used: set[str]) -> str:
    desc = re.sub(r"[^A-Za-z0-9]+", "_", info.description).strip("_") or info.modality or "series"
    num = "x" if info.series_number is None else str(info.series_number)
    stem = f"{num}_{desc}"
    if info.id != info.series_uid:  # one of several volumes split from one series
        stem += f"_{info.id.rsplit('.', 1)[-1]}"
    base, k = stem, 2
    while stem in used:
        stem, k = f"{base}_{k}", k + 1
    used.add(stem)
    return stem


@app.command()
def convert(
    study: Path = typer.Argument(..., help="DICOM folder/file/zip/DICOMDIR, or a NIfTI/NRRD/MHA file."),
    outdir: Path = typer.Argument(..., help="Folder for the volumes and their JSON sidecars."),
    fmt: str = typer.Option("nifti", "--format", help="nifti (.nii.gz) or nrrd."),
    modality: Optional[str] = typer.Option(None, help="Only series of this modality (CT, MR, PT...)."),  # noqa: UP045
    description: Optional[str] = typer.Option(None, help="Regex on SeriesDescription (case-insensitive)."),  # noqa: UP045
    orientation: Optional[str] = typer.Option(None, help="axial, sagittal, coronal or oblique."),  # noqa: UP045
    min_slices: Optional[int] = typer.Option(None, "--min-slices", help="Skip series with fewer slices."),  # noqa: UP045
    resample_irregular: bool = typer.Option(
        False, "--resample-irregular", help="Resample tilted/gapped/uneven series instead of refusing."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
) -> None:
    """Write one volume + JSON sidecar per selected series (all or nothing)."""
    import os
    import shutil
    import tempfile

    from pydantic import ValidationError
    from rich.console import Console

    from medpipe.errors import DicomError, InputError
    from medpipe.io.atomic import check_writable
    from medpipe.io.dicom import SeriesSelector, load_series, scan_study, write_sidecar
    from medpipe.io.volumes import VOLUME_SUFFIXES, read_volume, write_volume

    console = Console(stderr=True)
    if fmt not in _FORMATS:
        raise InputError(f"--format {fmt!r} is not one of {', '.join(_FORMATS)}")
    ext = _FORMATS[fmt]
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"{outdir} exists and is not a folder")

    volume_input = study.is_file() and any(study.name.lower().endswith(s) for s in VOLUME_SUFFIXES)
    if volume_input:
        stem = study.name
        for s in VOLUME_SUFFIXES:
            if stem.lower().endswith(s):
                stem = stem[: -len(s)]
                break
        plan = [(None, stem)]
    else:
        try:
            selector = SeriesSelector(
                modality=modality, description=description, orientation=orientation, min_slices=min_slices
            )
        except ValidationError as exc:
            msg = exc.errors()[0]
            raise InputError(f"invalid series filter: {msg.get('loc', ('',))[0]}: {msg['msg']}") from None
        scan = scan_study(study, progress=True)
        scan.require_images()
        if scan.orphan_errors:  # it may be a slice of the series we are about to write
            bad, why = scan.orphan_errors[0]
            more = f" (and {len(scan.orphan_errors) - 1} more)" if len(scan.orphan_errors) > 1 else ""
            raise DicomError(f"{bad} {why}{more}; fix or remove it, it may be part of a series being converted")
        if selector.model_dump(exclude_defaults=True):
            chosen = selector.select(scan)
        else:
            chosen = [s for s in scan.series if not s.fatal]
            for s in scan.series:
                if s.fatal:
                    console.print(f"[yellow]skipping[/yellow] {s.label()}: {s.fatal[0]}")
            if not chosen:
                s = scan.series[0]
                raise InputError(f"{s.label()} {s.fatal[0]}")
        used: set[str] = set()
        plan = [(s, _stem_for(s, used)) for s in chosen]

    # Refuse before any work if an output exists (all outputs checked, none written yet).
    for _, stem in plan:
        check_writable(outdir / f"{stem}{ext}", overwrite)
        check_writable(outdir / f"{stem}.json", overwrite)

    outdir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".medpipe-convert.", dir=outdir))
    written: list[tuple[str, str]] = []
    try:
        for info, stem in plan:
            image = read_volume(study) if info is None else load_series(
                info, resample_irregular=resample_irregular, progress=True
            )
            write_volume(image, staging / f"{stem}{ext}")
            write_sidecar(image, staging / f"{stem}.json")
            shape = "x".join(map(str, image.shape))
            notes = image.meta.extra.get("warnings", []) if info is not None else []
            written.append((f"{stem}{ext}", f"{shape} {image.orientation} {image.array.dtype}" + (
                f" ({'; '.join(notes)})" if notes else "")))
            del image
        for _, stem in plan:  # every series loaded: move them all into place
            for name in (f"{stem}{ext}", f"{stem}.json"):
                os.replace(staging / name, outdir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    out = Console()
    for name, what in written:
        out.print(f"wrote {outdir / name}  {what}")
