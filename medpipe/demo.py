"""`make demo`: the main job, end to end, on the built-in example study.

Writes the example CT study as DICOM (if not there yet), lists its series, runs the
shipped `ct_organs` pipeline on it with the shipped CT bundle, and prints where the label
map, DICOM SEG, statistics and preview PNG are. Everything goes under one output folder;
nothing outside it is written.

Usage: ``python -m medpipe.demo [OUT_DIR]`` (default ``demo_out``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from medpipe.cli import main as cli


def _step(console: Console, title: str, argv: list[str]) -> None:
    console.rule(f"[bold]{title}")
    console.print(f"$ medpipe {' '.join(argv)}", style="dim")
    t0 = time.perf_counter()
    rc = cli(argv)
    if rc != 0:
        console.print(f"[red]step failed (exit code {rc}): medpipe {' '.join(argv)}")
        raise SystemExit(rc)
    console.print(f"[dim]({time.perf_counter() - t0:.1f} s)")


def _result_files(run_dir: Path, record: dict) -> dict[str, Path]:
    """Role -> file for the run's results (from run.json outputs and the files manifests)."""
    found: dict[str, Path] = {}
    for paths in record.get("outputs", {}).values():
        for rel in paths:
            p = run_dir / rel
            if p.is_dir() and (p / "manifest.json").exists():
                for role, name in json.loads((p / "manifest.json").read_text()).items():
                    found[role] = p / name
            elif p.is_file():
                found[p.stem] = p
    return found


def _report(console: Console, run_dir: Path) -> None:
    """Show where the results are and the per-organ volumes."""
    record = json.loads((run_dir / "run.json").read_text())
    files = _result_files(run_dir, record)
    table = Table(title=f"results of {record['pipeline']['name']} on {run_dir.name}")
    table.add_column("what")
    table.add_column("file", overflow="fold")
    for what, role in (
        ("label map (NIfTI, on the input grid)", "nifti"),
        ("DICOM SEG (references the CT series)", "dicom_seg"),
        ("statistics (volume, HU per organ)", "table"),
        ("preview PNG", "preview"),
    ):
        table.add_row(what, str(files[role]) if role in files else "[red]missing")
    table.add_row("provenance", str(run_dir / "run.json"))
    console.print(table)
    if "table" in files:
        stats = json.loads(files["table"].read_text())["structures"]
        vt = Table(title="structures found")
        for col in ("structure", "volume (ml)", "mean HU"):
            vt.add_column(col, justify="left" if col == "structure" else "right")
        for name, row in stats.items():
            if row["voxels"]:
                vt.add_row(name, f"{row['volume_ml']:.1f}", f"{row['mean']:.0f}")
        console.print(vt)
    console.print(
        f"pipeline {record['status']} in {record['duration_s']:.1f} s, peak memory {record['peak_rss_mb']:.0f} MB"
    )


def run_demo(out: Path) -> int:
    console = Console()
    out.mkdir(parents=True, exist_ok=True)
    study = out / "example_study"
    if not study.exists():
        _step(console, "1. write the built-in example CT study as DICOM", ["data", "example", str(study)])
    _step(console, "2. what is in the study", ["inspect", str(study)])
    runs = out / "runs"
    _step(console, "3. run the ct_organs pipeline", ["run", "ct_organs", str(study), "-o", str(runs)])
    run_dirs = sorted(p.parent for p in runs.glob("*/run.json"))
    if not run_dirs:
        console.print(f"[red]no run directory under {runs}")
        return 1
    _report(console, run_dirs[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(run_demo(Path(sys.argv[1] if len(sys.argv) > 1 else "demo_out")))
