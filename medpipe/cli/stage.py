"""``medpipe stage`` (one stage of one study) and ``medpipe plan`` (what an engine schedules).

These two commands are the whole interface between medpipe and a workflow engine: the
engine reads ``medpipe plan --json`` once, then starts one ``medpipe stage`` process per
(study, stage) job. Exit codes: 0 done or cached, 1 the stage failed or the study was
refused (the message names study and stage), 2 bad pipeline, option or input.
"""

from __future__ import annotations

from pathlib import Path

import typer

from medpipe.cli.app import app


@app.command("stage")
def stage_command(
    pipeline: str = typer.Argument(..., help="Pipeline file (YAML) or shipped pipeline name."),
    stage: str = typer.Argument(..., help="The stage to run (a name from the pipeline file)."),
    study: Path = typer.Option(None, "--study", help="The study (needed by the stages that read input.study)."),
    run_dir: Path = typer.Option(..., "--run-dir", help="The study's run folder, OUT/<study>/ (as medpipe run makes it)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    set_: list[str] = typer.Option([], "--set", help="Override a parameter: --set stage.param=value (repeatable)."),
    target: list[str] = typer.Option([], "--target", help="The run's targets (as given to medpipe run), for run.json."),
    threads: int = typer.Option(None, "--threads", min=1, help="Threads the scheduler granted (capped at the cores)."),
    force: bool = typer.Option(False, "--force", help="Run the stage even if its cached result is valid."),
) -> None:
    """Run ONE stage of one study from the artifacts its upstream stages published in RUN_DIR."""
    import time

    from medpipe.errors import InputError, PipelineError

    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InputError(f"--device {device!r}: expected cpu, cuda or cuda:N")
    from medpipe.threads import apply_threads

    apply_threads(threads)  # the scheduler's grant, for torch, MKL and OpenVINO alike
    from medpipe.pipeline.runner import run_stage
    from medpipe.pipeline.spec import load_pipeline

    spec = load_pipeline(pipeline, set_)
    t0 = time.perf_counter()
    try:
        entry = run_stage(spec, stage, run_dir, study_path=study, device=device, force=force,
                          targets=list(target) or None)
    except PipelineError as exc:
        if "failed on study" in str(exc) or "refused before running" in str(exc):
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=1) from None
        raise
    took = time.perf_counter() - t0
    typer.echo(f"stage {stage} of study {run_dir.name}: {entry['status']} ({took:.1f} s)")
    for w in entry.get("warnings", []):
        typer.echo(f"warning: {w}", err=True)


@app.command("plan")
def plan_command(
    pipeline: str = typer.Argument(..., help="Pipeline file (YAML) or shipped pipeline name."),
    studies: Path = typer.Option(None, "--studies", help="A study or a folder of studies (discovered as medpipe run does)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (GPUs are requested only for cuda)."),
    set_: list[str] = typer.Option([], "--set", help="Override a parameter: --set stage.param=value (repeatable)."),
    target: list[str] = typer.Option([], "--target", help="Plan only what this stage[.output] needs (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON (what the Snakefile and the DAG factory read)."),
) -> None:
    """Show what a workflow engine schedules for PIPELINE: stages, order, resources, studies."""
    import json

    from medpipe.pipeline.plan import engine_plan
    from medpipe.pipeline.spec import load_pipeline

    plan = engine_plan(load_pipeline(pipeline, set_), studies, targets=list(target) or None, device=device)
    if as_json:
        typer.echo(json.dumps(plan, indent=2))
        return
    typer.echo(f"pipeline {plan['pipeline']['name']} ({plan['pipeline']['file']})")
    for st in plan["stages"]:
        r = st["resources"]
        needs = ", ".join(st["needs"]) or ("the study" if st["reads_study"] else "-")
        typer.echo(f"  {st['name']:<14} [{st['kind']}] needs {needs}; threads={r['threads']} mem_mb={r['mem_mb']} "
                   f"gpu={r['gpu']}")
    typer.echo(f"studies ({len(plan['studies'])}): " + ", ".join(s["name"] for s in plan["studies"]))
