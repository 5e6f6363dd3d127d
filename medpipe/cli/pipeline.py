"""``medpipe run`` and ``medpipe pipelines``: run a pipeline file on one study or a folder of studies."""

from __future__ import annotations

from pathlib import Path

import typer

from medpipe.cli.app import app


@app.command("run")
def run_command(
    pipeline: str = typer.Argument(..., help="Pipeline file (YAML) or shipped pipeline name (see `medpipe pipelines`)."),
    input_path: str = typer.Argument(..., metavar="INPUT", help="A study (DICOM folder, zip, NIfTI file), a folder of studies, "
                                     "or a PACS study pacs://SERVER/studies/UID (its DICOM SEG is sent back)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder; each study gets OUT/<study>/."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Studies processed in parallel (one process each)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    set_: list[str] = typer.Option([], "--set", help="Override a parameter: --set stage.param=value (repeatable)."),
    target: list[str] = typer.Option([], "--target", help="Run only what this stage[.output] needs (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate, print the stages in order and the studies, run nothing."),
    force: bool = typer.Option(False, "--force", help="Re-run every stage even if its cached result is valid."),
    events: bool = typer.Option(False, "--events", help="Print progress as JSON lines on stdout (for the Slicer module)."),
    pacs_config: Path | None = typer.Option(None, "--pacs-config", help="PACS config for a pacs:// INPUT."),
    send_back: bool = typer.Option(True, "--send-back/--no-send-back", help="Store the DICOM SEG of a pacs:// study in that PACS."),
) -> None:
    """Run PIPELINE on INPUT; cached stages are reused and crashed runs resume."""
    from medpipe.errors import InputError
    from medpipe.pipeline.discover import discover_studies
    from medpipe.pipeline.graph import PipelineGraph
    from medpipe.pipeline.spec import load_pipeline

    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InputError(f"--device {device!r}: expected cpu, cuda or cuda:N")
    spec = load_pipeline(pipeline, set_)
    graph = PipelineGraph(spec)
    targets = list(target) or list(spec.outputs)
    if targets:
        graph = graph.subgraph(targets)
    pacs_ref = None
    from medpipe.io.pacs import is_pacs_ref

    if is_pacs_ref(input_path):
        from medpipe.io.pacs import load_pacs_config, parse_study_ref

        pacs_ref = parse_study_ref(input_path, load_pacs_config(pacs_config))
        if dry_run:
            studies = [(pacs_ref.study_uid, Path(out) / ".pacs" / pacs_ref.study_uid)]
        else:
            from medpipe.pipeline.pacs_run import fetch_study

            studies = [fetch_study(pacs_ref, out)]
    else:
        studies = discover_studies(Path(input_path))

    from rich.console import Console

    console = Console(stderr=False, highlight=False)
    if dry_run:
        console.print(graph.describe(), markup=False)
        console.print(f"studies ({len(studies)}) -> {out}/<study>/:", markup=False)
        for name, path in studies:
            console.print(f"  {name}: {path}", markup=False)
        return

    from medpipe.cli._run_display import JsonEvents, RunDisplay
    from medpipe.pipeline.batch import run_studies

    display = JsonEvents() if events else RunDisplay(console, [n for n, _ in studies], graph.order)
    with display:
        results = run_studies(spec, studies, out, jobs=jobs, device=device, force=force,
                              targets=targets or None, on_event=display.on_event)
    display.summary(results)
    if pacs_ref is not None and send_back and results[0].ok:
        from medpipe.pipeline.pacs_run import send_back as send

        sent = send(pacs_ref, results[0])
        again = " (unchanged, not sent again)" if sent.get("already_sent") else ""
        display.note(f"sent {len(sent['sop_instance_uids'])} DICOM SEG instance(s) to "
                     f"{pacs_ref.server.label}{again}", sent)
    if not all(r.ok for r in results):
        raise typer.Exit(code=1)  # the summary above names each failed study and stage


@app.command("pipelines")
def pipelines_command() -> None:
    """List the shipped pipelines (name and one-line description)."""
    import yaml
    from rich.console import Console
    from rich.table import Table

    from medpipe.pipeline.spec import shipped_pipelines

    table = Table(title="shipped pipelines", show_lines=False)
    table.add_column("name", style="bold")
    table.add_column("description")
    found = shipped_pipelines()
    for name, path in found.items():
        try:
            raw = yaml.safe_load(path.read_text()) or {}
            desc = str(raw.get("description", "")).strip() if isinstance(raw, dict) else ""
        except (OSError, yaml.YAMLError) as exc:
            desc = f"(unreadable: {type(exc).__name__})"
        table.add_row(name, desc)
    console = Console()
    if not found:
        console.print("no shipped pipelines found")
        return
    console.print(table)
