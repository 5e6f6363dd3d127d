"""``medpipe pacs watch``: run a pipeline on every new stable study of an Orthanc PACS.

Orthanc's ``/changes`` feed numbers every event; a ``StableStudy`` change means no new
instance arrived for ``StableAge`` seconds. The watcher keeps one JSON state file
(``OUT/.watch-<server>.json``, rewritten atomically): the last sequence number it has
fully handled and one entry per study. So:

- **at most once per study** — a study with an entry that is ``done`` or ``failed`` is never
  run again (our own SEG arriving in the study makes Orthanc report it stable once more;
  that is skipped), and the SEG is sent once (``pacs.json`` in its run directory);
- **resumable** — after a restart it re-reads the feed from the saved number; a study that
  was ``running`` when the watcher stopped is run again, and the runner's cache makes that a
  resume, not a recomputation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medpipe.errors import MedpipeError
from medpipe.io.atomic import atomic_path
from medpipe.io.pacs import OrthancClient, PacsError, PacsServer, StudyRef
from medpipe.pipeline.spec import PipelineSpec

__all__ = ["watch", "state_path_for"]

EventSink = Callable[[dict[str, Any]], None]


def state_path_for(out_dir: str | Path, server: PacsServer) -> Path:
    return Path(out_dir) / f".watch-{server.name}.json"


def _load(path: Path, server: PacsServer) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return {"server": server.name, "since": 0, "studies": {}}
    except (OSError, ValueError) as exc:
        raise PacsError(f"watch state {path} is unreadable ({exc}); move it away to start from the beginning") from None
    if state.get("server") != server.name:
        raise PacsError(f"watch state {path} belongs to PACS {state.get('server')!r}, not {server.name!r}")
    return state


def _save(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(state, indent=2) + "\n")


def _run_one(server: PacsServer, spec: PipelineSpec, uid: str, out_dir: Path, device: str) -> dict[str, Any]:
    from medpipe.pipeline.batch import run_studies
    from medpipe.pipeline.pacs_run import fetch_study, send_back
    from medpipe.pipeline.provenance import now_iso

    ref = StudyRef(server, uid)
    try:
        name, folder = fetch_study(ref, out_dir)
        (result,) = run_studies(spec, [(name, folder)], out_dir, device=device)
        if not result.ok:
            return {"status": "failed", "error": result.error, "stage": result.failed_stage, "finished": now_iso()}
        sent = send_back(ref, result)
    except MedpipeError as exc:
        return {"status": "failed", "error": str(exc), "finished": now_iso()}
    return {"status": "done", "finished": now_iso(), "sent": len(sent.get("sop_instance_uids", []))}


def watch(
    server: PacsServer,
    spec: PipelineSpec,
    out_dir: str | Path,
    *,
    poll_s: float = 5.0,
    max_polls: int | None = None,
    device: str = "cpu",
    on_event: EventSink | None = None,
    from_now: bool = False,
) -> dict[str, Any]:
    """Follow ``server``'s change feed; returns the state after ``max_polls`` polls
    (forever when None). A PACS that cannot be reached is retried at the next poll.
    ``from_now`` on a first start skips the archive's history (only new studies run)."""
    if server.api != "orthanc":
        raise PacsError(f"{server.label}: watch mode follows Orthanc's /changes feed; set api: orthanc for it")
    emit = on_event or (lambda e: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = state_path_for(out_dir, server)
    state = _load(path, server)
    client = OrthancClient(server)
    if from_now and not path.exists():
        while True:
            _, last, done = client.changes(int(state["since"]), limit=1000)
            state["since"] = last
            if done:
                break
        _save(path, state)
    polls = 0
    while max_polls is None or polls < max_polls:
        polls += 1
        try:
            changes, last, done = client.changes(int(state["since"]))
            for change in changes:
                if change.get("ChangeType") != "StableStudy":
                    continue
                uid = client.study_uid(str(change.get("ID", "")))
                entry = state["studies"].get(uid, {})
                if not uid or entry.get("status") in ("done", "failed"):
                    continue
                state["studies"][uid] = {"status": "running"}
                _save(path, state)
                emit({"event": "watch_study", "study": uid, "status": "running"})
                state["studies"][uid] = _run_one(server, spec, uid, out_dir, device)
                _save(path, state)
                emit({"event": "watch_study", "study": uid, **state["studies"][uid]})
            state["since"] = last
            _save(path, state)
        except PacsError as exc:
            emit({"event": "watch_error", "message": str(exc)})
            done = True
        if done and (max_polls is None or polls < max_polls):
            time.sleep(poll_s)
    return state
