"""Local mode: run ``medpipe run --events`` as a subprocess and stream its progress.

No server needed (as SlicerTotalSegmentator runs its CLI): the module writes the volume to a
temporary file, starts ``<python> -m medpipe run PIPELINE FILE -o OUT --events`` with the
Python that has medpipe installed, and reads one JSON event per line from its stdout while
it runs. The export stage named ``write`` (as in every shipped pipeline) is told to write a
``.seg.nrrd`` so the result keeps the bundle's segment names and colours.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["LocalRun", "LocalRunError", "describe_event"]


class LocalRunError(Exception):
    """The local run could not start, or ended without a result."""


def describe_event(event: dict[str, Any]) -> str | None:
    """One status line for an event (None for events not worth a line)."""
    kind = event.get("event")
    if kind == "stage_start":
        return f"{event['stage']}: running"
    if kind == "stage_end":
        err = f" ({event['error']})" if event.get("error") else ""
        return f"{event['stage']}: {event['status']}{err}"
    if kind == "track" and event.get("total"):
        return f"{event['stage']}: {event.get('description') or 'progress'} {event['completed']}/{event['total']}"
    if kind == "summary":
        return f"{event['study']}: {event['status']}" + (f" ({event['error']})" if event.get("error") else "")
    if kind == "note":
        return str(event.get("message"))
    return None


class LocalRun:
    """One ``medpipe run`` subprocess; ``run()`` blocks, ``cancel()`` may come from another thread."""

    def __init__(self, python: str, pipeline: str, input_path: str | Path, out_dir: str | Path,
                 extra_args: Sequence[str] = ("--set", "write.formats=[nifti,seg_nrrd]"),
                 env: dict[str, str] | None = None) -> None:
        self.command = [python, "-m", "medpipe", "run", pipeline, str(input_path), "-o", str(out_dir),
                        "--events", *extra_args]
        self.out_dir = Path(out_dir)
        self.env = env
        self._proc: subprocess.Popen[str] | None = None
        self._cancelled = threading.Event()
        self.stderr = ""

    def cancel(self) -> None:
        self._cancelled.set()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()

    def run(self, on_event: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Run to the end; returns the study's ``summary`` event (status, outputs, error)."""
        try:
            self._proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          env=self.env, bufsize=1)
        except OSError as exc:
            raise LocalRunError(f"cannot start {self.command[0]} ({exc.strerror}); set the Python that has medpipe") from None
        if self._cancelled.is_set():
            self._proc.terminate()
        errors: list[str] = []
        reader = threading.Thread(target=lambda: errors.append(self._proc.stderr.read()), daemon=True)
        reader.start()
        summary = None
        for line in self._proc.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "summary":
                summary = event
            if on_event is not None:
                on_event(event)
        code = self._proc.wait()
        reader.join(5)
        self.stderr = "".join(errors)
        if self._cancelled.is_set():
            raise LocalRunError("cancelled")
        if summary is None:
            last = [ln for ln in self.stderr.strip().splitlines() if ln.strip()]
            raise LocalRunError(last[-1] if last else f"medpipe run exited with code {code} and no result")
        return summary

    def result_file(self, summary: dict[str, Any], suffix: str = ".seg.nrrd") -> Path | None:
        """The first result file ending in ``suffix`` (files artifacts are folders)."""
        run_dir = Path(summary["run_dir"])
        for paths in summary.get("outputs", {}).values():
            for rel in paths:
                p = run_dir / rel
                found = sorted(p.rglob(f"*{suffix}")) if p.is_dir() else ([p] if p.name.endswith(suffix) else [])
                if found:
                    return found[0]
        return None
