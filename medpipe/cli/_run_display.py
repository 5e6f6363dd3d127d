"""Live progress and the final summary table of ``medpipe run`` (rich), or JSON lines (``--events``)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from medpipe.pipeline.runner import RunResult


class RunDisplay:
    """One progress row per study: stages done out of total, the running stage and its
    inner progress (from ``ctx.track``)."""

    def __init__(self, console: Console, studies: list[str], stages: list[str]) -> None:
        self.console = console
        self.n_stages = max(1, len(stages))
        self.progress = Progress(
            TextColumn("{task.fields[study]}", style="bold"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}
        self.studies = studies
        self.started: dict[str, float] = {}

    def __enter__(self) -> RunDisplay:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def _task(self, study: str) -> Any:
        if study not in self.tasks:
            self.tasks[study] = self.progress.add_task(
                "queued", total=self.n_stages, study=escape(study), start=False
            )
        return self.tasks[study]

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        study = event["study"]
        task = self._task(study)
        if kind == "study_start":
            self.progress.update(task, total=max(1, len(event["stages"])))
            self.progress.start_task(task)
            self.started[study] = time.perf_counter()
        elif kind == "stage_start":
            self.progress.update(task, description=escape(event["stage"]))
        elif kind == "track":
            total = event.get("total")
            inner = f"{event['completed']}/{total}" if total else str(event["completed"])
            label = event.get("description") or "progress"
            self.progress.update(task, description=escape(f"{event['stage']}: {label} {inner}"))
        elif kind == "stage_end":
            self.progress.advance(task)
            if event["status"] == "failed":
                self.progress.update(task, description=escape(f"[failed at {event['stage']}]"))
        elif kind == "study_end" and event.get("final"):
            desc = "done" if event["status"] == "done" else "failed"
            self.progress.update(task, description=desc)
            self.progress.stop_task(task)

    def summary(self, results: list[RunResult]) -> None:
        table = Table(title="medpipe run", show_lines=False)
        for col in ("study", "status", "run", "cached", "time", "outputs"):
            table.add_column(col, no_wrap=col in ("study", "status"))
        for r in results:
            status = "[green]done[/]" if r.ok else "[red]failed[/]"
            files = [f for fs in r.outputs.values() for f in fs]
            outs = escape(", ".join(files[:3]) + (f" (+{len(files) - 3})" if len(files) > 3 else ""))
            table.add_row(escape(r.study), status, str(r.n_run), str(r.n_cached), f"{r.duration_s:.1f}s", outs)
        self.console.print(table)
        for r in results:
            for w in r.warnings:
                self.console.print(f"[yellow]warning[/] {escape(r.study)} {escape(w)}")
        failed = [r for r in results if not r.ok]
        for r in failed:
            if r.refused:
                where = f"before running (check of stage {r.failed_stage})"
            else:
                where = f"at stage {r.failed_stage}" if r.failed_stage else "before its first stage"
            self.console.print(
                f"[red]failed[/] {escape(r.study)} {escape(where)}: {escape(r.error or 'unknown error')}"
            )
            logs = r.run_dir / "logs" / f"{r.failed_stage}.log"
            if r.failed_stage and not r.refused and logs.exists():
                self.console.print(f"  traceback: {escape(str(logs))}")
        ok = len(results) - len(failed)
        self.console.print(f"{ok}/{len(results)} studies done; results in {escape(str(results[0].run_dir.parent)) if results else '-'}")

    def note(self, text: str, data: dict[str, Any] | None = None) -> None:
        self.console.print(escape(text))


class JsonEvents:
    """``medpipe run --events``: every runner event as one JSON line on stdout, then one
    ``summary`` line per study; what the Slicer module's local mode reads."""

    def __enter__(self) -> JsonEvents:
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stdout.flush()

    @staticmethod
    def _emit(event: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(event, default=str) + "\n")
        sys.stdout.flush()

    def on_event(self, event: dict[str, Any]) -> None:
        self._emit(event)

    def summary(self, results: list[RunResult]) -> None:
        for r in results:
            self._emit({"event": "summary", "study": r.study, "status": r.status, "run_dir": str(r.run_dir),
                        "outputs": r.outputs, "warnings": r.warnings, "error": r.error,
                        "failed_stage": r.failed_stage, "duration_s": r.duration_s})

    def note(self, text: str, data: dict[str, Any] | None = None) -> None:
        self._emit({"event": "note", "message": text, **({"data": data} if data else {})})
