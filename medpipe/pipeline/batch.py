"""Run one pipeline on many studies, each in its own process.

Why not ``ProcessPoolExecutor``: when one worker dies (a segfault in a native library,
``os._exit``, the OOM killer) the whole pool is declared broken and every pending
study fails with it. Here each study gets a fresh spawned process; a dead process is
one failed study, reported with the stage it was running, and the others go on.
Each worker reports progress through its own pipe (a shared queue's lock could be
left held by a worker that died mid-write, blocking the others); results are read back from each study's
``run.json`` (the record the worker wrote, identified by its pid).
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing as mp
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from medpipe.errors import MedpipeError, PipelineError
from medpipe.pipeline.provenance import locked, now_iso, read_run_record, write_run_record
from medpipe.pipeline.runner import RunResult
from medpipe.pipeline.spec import PipelineSpec
from medpipe.pipeline.stage import get_stage, list_stages

__all__ = ["run_studies"]

EventSink = Callable[[dict[str, Any]], None]


def _stage_modules(spec: PipelineSpec) -> list[str]:
    """Modules that registered the kinds ``spec`` uses, so a spawned worker can import them."""
    list_stages()  # make sure the built-ins are registered
    modules = {get_stage(st.kind).__module__ for st in spec.stages.values()}
    if "__main__" in modules:
        kinds = sorted(st.kind for st in spec.stages.values() if get_stage(st.kind).__module__ == "__main__")
        raise PipelineError(
            f"stage kind(s) {', '.join(kinds)} are defined in the __main__ script; worker processes "
            "cannot import them: move them to an importable module"
        )
    return sorted(modules)


@contextlib.contextmanager
def _no_main_reimport() -> Iterator[None]:
    """Spawned workers need only the modules we pass them, not the caller's ``__main__``.

    multiprocessing re-runs the parent's main script in every spawned child, which fails
    for stdin/notebook sessions and re-executes unguarded scripts; hiding the main
    module's file/spec while starting a worker skips that (restored right after).
    """
    main = sys.modules.get("__main__")
    saved = {k: getattr(main, k) for k in ("__file__", "__spec__") if main is not None and hasattr(main, k)}
    try:
        for k in saved:
            if k == "__file__":
                delattr(main, k)
            else:
                setattr(main, k, None)
        yield
    finally:
        for k, v in saved.items():
            setattr(main, k, v)


def _worker(
    payload: dict[str, Any], modules: list[str], study: str, study_path: str, out_dir: str,
    device: str, force: bool, targets: list[str] | None, events: Any,
) -> None:
    import os

    from medpipe.pipeline.runner import run_pipeline

    last = [0.0]

    def sink(event: dict[str, Any]) -> None:
        if event["event"] == "track":  # throttle inner progress to ~10 messages/s
            now = time.monotonic()
            if now - last[0] < 0.1 and event.get("completed") != event.get("total"):
                return
            last[0] = now
        events.send(event)

    try:
        from medpipe.threads import apply_threads

        apply_threads()  # the same count for torch, MKL and OpenVINO as `medpipe stage` sets
        for m in modules:
            importlib.import_module(m)
        spec = PipelineSpec.from_payload(payload)
        result = run_pipeline(spec, study_path, out_dir, device=device, force=force, targets=targets,
                              study_name=study, events=sink)
    except MedpipeError as exc:
        events.send({"event": "study_error", "study": study, "pid": os.getpid(), "message": str(exc)})
        events.close()
        raise SystemExit(3) from None
    events.close()
    raise SystemExit(0 if result.ok else 1)


def _death_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"worker process was killed by {name}"
    return f"worker process died with exit code {exitcode}"


def _collect(study: str, run_dir: Path, pid: int, exitcode: int | None, error: str | None) -> RunResult:
    """The result of a finished worker, from its run.json; a dead worker's record is closed."""
    record = read_run_record(run_dir)
    ours = record is not None and record.get("host", {}).get("pid") == pid
    if ours and record.get("status") in ("done", "failed") and exitcode in (0, 1):
        return RunResult.from_record(run_dir, record)
    reason = error or _death_reason(exitcode)
    if not ours:
        return RunResult(study=study, run_dir=run_dir, status="failed", error=reason)
    # The worker died mid-stage: close its record so run.json says what happened.
    running = [n for n, e in record.get("stages", {}).items() if e.get("status") == "running"]
    failed_stage = running[0] if running else None
    for n, e in record.get("stages", {}).items():
        if n == failed_stage:
            e.update(status="failed", error=reason, finished=now_iso())
        elif e.get("status") in ("pending", "running"):
            e["status"] = "skipped"
    record.update(status="failed", finished=now_iso(), error={"stage": failed_stage, "message": reason})
    with locked(run_dir / ".record.lock"):
        write_run_record(run_dir, record)
    artifacts = run_dir / "artifacts"
    if artifacts.is_dir():  # the dead stage's temp folder: nothing half-written stays
        for tmp in artifacts.glob(f".*.tmp-{pid}-*"):
            shutil.rmtree(tmp, ignore_errors=True)
    return RunResult.from_record(run_dir, record)


def run_studies(
    spec: PipelineSpec,
    studies: Sequence[tuple[str, Path]],
    out_dir: str | Path,
    *,
    jobs: int = 1,
    device: str = "cpu",
    force: bool = False,
    targets: Sequence[str] | None = None,
    on_event: EventSink | None = None,
    cancel: Callable[[str], str | None] | None = None,
) -> list[RunResult]:
    """Run ``spec`` on every (name, path) study, up to ``jobs`` at a time, each in its own
    process. Never raises for a study's failure: it is in that study's RunResult.

    ``cancel(study)`` is polled while a study runs (the server's DELETE /jobs); a reason it
    returns terminates that study's process, and the reason becomes the study's error."""
    from multiprocessing.connection import wait

    ctx = mp.get_context("spawn")
    emit = on_event or (lambda e: None)
    payload = spec.payload()
    modules = _stage_modules(spec)
    out_dir = Path(out_dir)
    pending = list(studies)
    running: dict[str, Any] = {}
    pipes: dict[str, Any] = {}
    errors: dict[str, str] = {}
    results: dict[str, RunResult] = {}

    def drain(timeout: float) -> None:
        for conn in wait(list(pipes.values()), timeout=timeout):
            while True:
                try:
                    if not conn.poll():
                        break
                    event = conn.recv()
                except (EOFError, OSError):  # the worker is gone; its exit is handled below
                    break
                if event["event"] == "study_error":
                    errors[event["study"]] = event["message"]
                emit(event)

    while pending or running:
        while pending and len(running) < max(1, jobs):
            name, path = pending.pop(0)
            reader, writer = ctx.Pipe(duplex=False)
            proc = ctx.Process(
                target=_worker,
                args=(payload, modules, name, str(path), str(out_dir), device, force,
                      list(targets) if targets else None, writer),
                name=f"medpipe-{name}",
            )
            with _no_main_reimport():
                proc.start()
            writer.close()  # the child holds the only writer: EOF when it exits
            running[name] = proc
            pipes[name] = reader
            emit({"event": "study_queued", "study": name})
        if pipes:
            drain(0.1)
        for name, proc in list(running.items()):
            if proc.exitcode is None and cancel is not None and name not in errors:
                reason = cancel(name)
                if reason:
                    errors[name] = reason
                    proc.terminate()
            if proc.exitcode is None:
                continue
            proc.join()
            drain(0.0)
            del running[name]
            pipes.pop(name).close()
            res = _collect(name, out_dir / name, proc.pid, proc.exitcode, errors.get(name))
            results[name] = res
            emit({"event": "study_end", "study": name, "status": res.status, "final": True})
    return [results[name] for name, _ in studies]
