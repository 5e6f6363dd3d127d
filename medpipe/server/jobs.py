"""Jobs of the server: a persistent queue drained by worker threads through the same runner.

Each job is a folder ``STATE/jobs/<id>/``::

    job.json            the record GET /jobs/{id} returns (rewritten atomically)
    input/input.<ext>   the upload, under a name the server chose
    run/<study>/        the run directory (run.json, artifacts, logs) exactly as `medpipe run` makes it
    run/.pacs/<uid>/    a study pulled from a PACS
    result/             the .seg.nrrd made on first request
    server.log          the traceback of a failure outside the pipeline (never expected)

A job runs through :func:`medpipe.pipeline.batch.run_studies`, i.e. in a fresh process:
a job that crashes (a segfault, the OOM killer, ``os._exit``) is one failed job and the
server goes on. Everything lives on disk, so results survive a restart, and a job that was
queued or running when the server stopped is queued again when it starts (the runner's
cache turns the re-run into a resume). Cancelling terminates the job's process.
"""

from __future__ import annotations

import json
import queue
import shutil
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any, BinaryIO

from medpipe.errors import MedpipeError
from medpipe.io.atomic import atomic_dir, atomic_path
from medpipe.pipeline.provenance import now_iso
from medpipe.server.config import ServerConfig

__all__ = ["JobManager", "JobNotFound", "ACTIVE_STATES", "is_job_id"]

ACTIVE_STATES = ("queued", "fetching", "running", "sending")
FINAL_STATES = ("done", "failed", "cancelled")
_STUDY = "study"


class JobNotFound(Exception):
    pass


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "started_monotonic"}


def is_job_id(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


class JobManager:
    """The queue, the worker threads and the job records (small dicts, also on disk)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.root = config.state_dir / "jobs"
        self._jobs: dict[str, dict[str, Any]] = {}
        self._lock = threading.RLock()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._cancel: dict[str, str] = {}
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_save: dict[str, float] = {}

    # -- life cycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Load every job on disk, queue the unfinished ones again, start the workers."""
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(".*"):  # a submission the server died in the middle of
            shutil.rmtree(stale, ignore_errors=True)
        pending = []
        for path in sorted(self.root.glob("*/job.json")):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if not is_job_id(str(record.get("id", ""))):
                continue
            if record["state"] in ACTIVE_STATES:
                record.update(state="queued", requeued=record.get("requeued", 0) + 1)
                pending.append(record)
            self._jobs[record["id"]] = record
        for record in sorted(pending, key=lambda r: r["created"]):
            self._save(record)
            self._queue.put(record["id"])
        for i in range(max(1, self.config.workers)):
            t = threading.Thread(target=self._worker, name=f"medpipe-job-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; running ones are interrupted and stay queued for the next start."""
        self._stopping.set()
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    # -- records --------------------------------------------------------------------------
    def _dir(self, job_id: str) -> Path:
        return self.root / job_id

    def _save(self, record: dict[str, Any]) -> None:
        with atomic_path(self._dir(record["id"]) / "job.json") as tmp:
            tmp.write_text(json.dumps(_public(record), indent=2, default=str) + "\n")
        self._last_save[record["id"]] = time.monotonic()

    def get(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            if job_id not in self._jobs:
                raise JobNotFound(job_id)
            return json.loads(json.dumps(_public(self._jobs[job_id]), default=str))

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{k: r.get(k) for k in ("id", "pipeline", "state", "created", "finished", "progress")}
                    for r in sorted(self._jobs.values(), key=lambda r: r["created"])]

    def run_dir(self, job_id: str) -> Path:
        return self._dir(job_id) / "run" / self.get(job_id)["study"]

    def result_cache(self, job_id: str) -> Path:
        return self._dir(job_id) / "result"

    @property
    def queue_length(self) -> int:
        with self._lock:
            return sum(1 for r in self._jobs.values() if r["state"] == "queued")

    # -- submission -------------------------------------------------------------------------
    def _new_record(self, job_id: str, pipeline: str, stages: list[str], input_info: dict[str, Any], study: str) -> dict[str, Any]:
        return {
            "id": job_id, "pipeline": pipeline, "state": "queued", "created": now_iso(), "started": None,
            "finished": None, "duration_s": None, "input": input_info, "study": study,
            "stages": {s: {"status": "pending"} for s in stages}, "progress": 0.0, "warnings": [], "error": None,
            "failed_stage": None, "results": [], "pacs": None,
        }

    def submit_upload(self, pipeline: str, stages: list[str], stream: BinaryIO, filename: str | None) -> dict[str, Any]:
        """Store and check the upload, then queue the job; nothing stays behind on refusal."""
        from medpipe.server.uploads import store_upload

        job_id = uuid.uuid4().hex
        with atomic_dir(self._dir(job_id), tmp_prefix=f".{job_id}.") as tmp:
            info = store_upload(stream, filename, tmp / "input", max_bytes=self.config.max_upload_bytes,
                                unzipped_limit=self.config.unzipped_limit)
            record = self._new_record(job_id, pipeline, stages, info, info.get("study") or _STUDY)
            (tmp / "job.json").write_text(json.dumps(record, indent=2) + "\n")
        return self._enqueue(record)

    def submit_pacs(self, pipeline: str, stages: list[str], ref: Any, send_back: bool) -> dict[str, Any]:
        job_id = uuid.uuid4().hex
        info = {"source": "pacs", "name": str(ref), "server": ref.server.name, "study_uid": ref.study_uid,
                "send_back": send_back}
        record = self._new_record(job_id, pipeline, stages, info, ref.study_uid)
        with atomic_dir(self._dir(job_id), tmp_prefix=f".{job_id}.") as tmp:
            (tmp / "job.json").write_text(json.dumps(record, indent=2) + "\n")
        return self._enqueue(record)

    def _enqueue(self, record: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._jobs[record["id"]] = record
        self._queue.put(record["id"])
        return self.get(record["id"])

    # -- cancel / delete ----------------------------------------------------------------------
    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job (its process is terminated)."""
        with self._lock:
            record = self._jobs.get(job_id)
            if record is None:
                raise JobNotFound(job_id)
            if record["state"] == "queued":
                record.update(state="cancelled", finished=now_iso(), error="cancelled by the client before it started")
                self._save(record)
            elif record["state"] in ACTIVE_STATES:
                self._cancel[job_id] = "cancelled by the client"
                record["cancel_requested"] = True
                self._save(record)
            return self.get(job_id)

    def delete(self, job_id: str) -> None:
        """Remove a finished job and its files."""
        with self._lock:
            record = self._jobs.get(job_id)
            if record is None:
                raise JobNotFound(job_id)
            if record["state"] in ACTIVE_STATES:
                raise ValueError(f"job {job_id} is {record['state']}; cancel it first")
            del self._jobs[job_id]
        shutil.rmtree(self._dir(job_id), ignore_errors=True)

    # -- running --------------------------------------------------------------------------------
    def _worker(self) -> None:
        while not self._stopping.is_set():
            job_id = self._queue.get()
            if job_id is None:
                return
            try:
                self._run(job_id)
            except Exception as exc:  # a bug of ours: one failed job, logged; the server goes on
                log = self._dir(job_id) / "server.log"
                try:
                    log.write_text("".join(traceback.format_exception(exc)))
                except OSError:
                    pass
                self._finish(job_id, "failed", error=f"internal server error ({type(exc).__name__}: {exc}); "
                                                     "the traceback is in the job's server.log")

    def _update(self, job_id: str, persist: bool = True, **fields: Any) -> dict[str, Any]:
        with self._lock:
            record = self._jobs[job_id]
            record.update(fields)
            if persist:
                self._save(record)
            return record

    def _finish(self, job_id: str, state: str, **fields: Any) -> None:
        with self._lock:
            if job_id not in self._jobs:
                return
            record = self._jobs[job_id]
            started = record.get("started_monotonic")
            record.pop("started_monotonic", None)
            record.pop("cancel_requested", None)
            self._cancel.pop(job_id, None)
            duration = round(time.monotonic() - started, 3) if started else None
            self._update(job_id, state=state, finished=now_iso(), duration_s=duration, **fields)

    def _on_event(self, job_id: str) -> Any:
        def handle(event: dict[str, Any]) -> None:
            kind = event.get("event")
            with self._lock:
                record = self._jobs.get(job_id)
                if record is None:
                    return
                stage = event.get("stage")
                entry = record["stages"].get(stage) if stage else None
                if kind == "stage_start" and entry is not None:
                    entry.update(status="running")
                elif kind == "stage_end" and entry is not None:
                    entry.update(status=event.get("status"))
                    entry.pop("progress", None)
                    if event.get("error"):
                        entry["error"] = event["error"]
                elif kind == "track" and entry is not None:
                    entry["progress"] = {"completed": event.get("completed"), "total": event.get("total"),
                                         "description": event.get("description", "")}
                else:
                    return
                finished = sum(1 for s in record["stages"].values() if s.get("status") in ("done", "cached", "failed", "skipped"))
                record["progress"] = round(finished / max(1, len(record["stages"])), 3)
                if kind != "track" or time.monotonic() - self._last_save.get(job_id, 0.0) > 2.0:
                    self._save(record)

        return handle

    def _cancel_reason(self, job_id: str) -> str | None:
        if self._stopping.is_set():
            return "the server is stopping"
        return self._cancel.get(job_id)

    def _run(self, job_id: str) -> None:
        from medpipe.pipeline.batch import run_studies
        from medpipe.pipeline.spec import load_pipeline

        with self._lock:
            record = self._jobs.get(job_id)
            if record is None or record["state"] != "queued":
                return  # cancelled (or deleted) while it waited
            record["started_monotonic"] = time.monotonic()
            self._update(job_id, state="running", started=now_iso())
        job_dir = self._dir(job_id)
        runs = job_dir / "run"
        info = record["input"]
        try:
            spec = load_pipeline(record["pipeline"])
            ref = None
            if info["source"] == "pacs":
                from medpipe.pipeline.pacs_run import fetch_study

                ref = self._pacs_ref(info)
                self._update(job_id, state="fetching")
                _, study_path = fetch_study(ref, runs)
                self._update(job_id, state="running")
            else:
                study_path = job_dir / "input" / info["file"]
            if self._cancel_reason(job_id):
                return self._interrupted(job_id)
            (result,) = run_studies(spec, [(record["study"], study_path)], runs, device=self.config.device,
                                    on_event=self._on_event(job_id), cancel=lambda _: self._cancel_reason(job_id))
        except MedpipeError as exc:
            return self._finish(job_id, "failed", error=str(exc))
        if self._cancel_reason(job_id):
            return self._interrupted(job_id)
        from medpipe.server.results import available_formats

        with self._lock:  # the run's own record is the truth (a dead worker sent no stage_end)
            for name, status in result.stages.items():
                if name in record["stages"]:
                    record["stages"][name]["status"] = status
                    record["stages"][name].pop("progress", None)
        fields = {"warnings": result.warnings, "results": available_formats(result.run_dir) if result.ok else []}
        if not result.ok:
            return self._finish(job_id, "failed", error=result.error, failed_stage=result.failed_stage, **fields)
        if ref is not None and info.get("send_back"):
            from medpipe.pipeline.pacs_run import send_back

            self._update(job_id, state="sending", **fields)
            try:
                sent = send_back(ref, result)
            except MedpipeError as exc:
                return self._finish(job_id, "failed", error=f"the pipeline ran, but sending the DICOM SEG failed: {exc}")
            fields["pacs"] = {"server": ref.server.name, "sent_sop_instance_uids": sent.get("sop_instance_uids", [])}
        self._finish(job_id, "done", **fields)

    def _interrupted(self, job_id: str) -> None:
        if job_id in self._cancel and not self._stopping.is_set():
            return self._finish(job_id, "cancelled", error=self._cancel[job_id])
        with self._lock:  # the server is stopping: the job stays queued for the next start
            record = self._jobs[job_id]
            record.pop("started_monotonic", None)
            self._update(job_id, state="queued", interrupted=now_iso())

    def _pacs_ref(self, info: dict[str, Any]) -> Any:
        from medpipe.io.pacs import StudyRef, load_pacs_config

        servers = load_pacs_config(self.config.pacs_config) if self.config.pacs_config else {}
        if info["server"] not in servers:
            raise MedpipeError(f"PACS {info['server']!r} is no longer in the server's PACS config")
        return StudyRef(servers[info["server"]], info["study_uid"])
