"""``medpipe evaluate PRED_DIR GT_DIR``: Dice, HD95, NSD and volume error per case and label.

Example:
    medpipe evaluate preds/ Dataset001_CT/labelsTr -o eval/ --labels 1,2,3 --nsd-tolerance 2
"""

from __future__ import annotations

from pathlib import Path

import typer

from medpipe.cli.app import app


def _parse_labels(text: str | None) -> list[int] | None:
    from medpipe.errors import InputError

    if not text:
        return None
    try:
        labels = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError as exc:
        raise InputError(f"--labels must be comma-separated integers such as 1,2,3, got {text!r}") from exc
    if not labels or any(v <= 0 for v in labels):
        raise InputError(f"--labels must list foreground labels (integers > 0), got {text!r}")
    return labels


@app.command()
def evaluate(
    pred_dir: Path = typer.Argument(..., help="Folder of predicted label maps (CASE.nii.gz)."),
    gt_dir: Path = typer.Argument(..., help="Folder of ground-truth label maps with the same case names."),
    labels: str | None = typer.Option(None, "--labels", help="Labels to score, e.g. 1,2,3 (default: all)."),
    out: Path = typer.Option(Path("evaluation"), "-o", "--out", help="Report folder to create."),
    nsd_tolerance: float = typer.Option(2.0, "--nsd-tolerance", help="Surface Dice tolerance in mm."),
    allow_missing: bool = typer.Option(
        False, "--allow-missing", help="Report cases without a prediction instead of failing."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the report folder if it exists."),
) -> None:
    """Score predictions against ground truth; writes evaluation.csv/.json and a box plot PNG."""
    import math

    from rich.console import Console
    from rich.table import Table

    from medpipe.errors import InputError
    from medpipe.evaluation import METRIC_NAMES, evaluate_folders, write_report
    from medpipe.io.atomic import check_writable

    check_writable(out, overwrite)
    if not math.isfinite(nsd_tolerance) or nsd_tolerance < 0:
        raise InputError(f"--nsd-tolerance must be a number of mm >= 0, got {nsd_tolerance}")
    report = evaluate_folders(pred_dir, gt_dir, _parse_labels(labels), nsd_tolerance, allow_missing)
    write_report(report, out, overwrite=overwrite)

    table = Table(title=f"{report.summary()['n_cases']} cases", title_justify="left")
    table.add_column("label")
    for m in METRIC_NAMES[:3] + ("volume_diff_pct",):
        table.add_column(m, justify="right")
    for lab in report.labels:
        name = report.label_names.get(lab, str(lab))
        table.add_row(name, *(f"{report.mean(m, lab):.3f}" for m in ("dice", "hd95", "nsd", "volume_diff_pct")))
    table.add_row("[bold]mean", *(f"{report.mean(m):.3f}" for m in ("dice", "hd95", "nsd", "volume_diff_pct")))
    console = Console()
    console.print(table)
    if report.missing:
        console.print(f"[yellow]{len(report.missing)} case(s) without a prediction: {', '.join(report.missing)}")
    console.print(f"report: {out}/evaluation.csv, evaluation.json, evaluation_boxplot.png")
