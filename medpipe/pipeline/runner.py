"""Run a pipeline on one study: cached, resumable, with provenance.

Layout of a study's run directory ``OUT/<study>/``::

    run.json                        provenance, rewritten atomically after every stage
    artifacts/input/study.json      the study path (the ``input.study`` pseudo-artifact)
    artifacts/<stage>/<output>.*    a stage's outputs, plus _record.json (key + hashes)
    logs/<stage>.log                traceback and warnings of a stage that failed/warned

A stage runs inside ``artifacts/.<stage>.tmp-<pid>-<rand>/`` (its ``ctx.workdir`` is
``work/`` in there); its outputs are saved next to ``work/`` and the folder is renamed
to ``artifacts/<stage>/`` only when everything is written, so a failed or killed stage
never leaves a half-written artifact. ``_record.json`` travels inside that rename: a
stage folder that exists is complete, whatever happened to run.json afterwards.

Why our own runner: the guarantees above (atomic stage outputs, content-hash caching,
resume, per-stage provenance) are the product; Snakemake/Airflow call ``run_stage``
to get the same guarantees one stage at a time.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medpipe.errors import InputError, MedpipeError, PipelineError
from medpipe.io.atomic import atomic_dir
from medpipe.pipeline.artifacts import StudyInputArtifact, json_default_lenient
from medpipe.pipeline.cache import hash_external, hash_files, hash_study, stage_key
from medpipe.pipeline.graph import INPUT_STAGE, PipelineGraph, split_ref
from medpipe.pipeline.preflight import run_preflight
from medpipe.pipeline.provenance import (
    RUN_SCHEMA,
    PeakMemory,
    host_info,
    locked,
    now_iso,
    process_peak_rss_mb,
    read_run_record,
    software_versions,
    write_run_record,
)
from medpipe.pipeline.spec import PipelineSpec, load_pipeline
from medpipe.pipeline.stage import StageContext
from medpipe.threads import stage_threads

__all__ = ["RunResult", "run_pipeline", "run_stage", "study_name_of", "EventSink", "output_files_of"]

EventSink = Callable[[dict[str, Any]], None]
RECORD = "_record.json"
_STUDY_SUFFIXES = (".nii.gz", ".nii", ".zip", ".nrrd", ".nhdr", ".mha", ".mhd", ".h5", ".hdf5")


@dataclass
class RunResult:
    """How one study's run ended."""

    study: str
    run_dir: Path
    status: str  # "done" | "failed"
    stages: dict[str, str] = field(default_factory=dict)  # stage -> done/cached/failed/skipped
    failed_stage: str | None = None
    error: str | None = None
    outputs: dict[str, list[str]] = field(default_factory=dict)  # ref -> files (relative to run_dir)
    duration_s: float = 0.0
    refused: bool = False  # failed a pre-run check: no stage ran
    warnings: list[str] = field(default_factory=list)  # "stage: message", in stage order

    @property
    def ok(self) -> bool:
        return self.status == "done"

    @property
    def n_run(self) -> int:
        return sum(s == "done" for s in self.stages.values())

    @property
    def n_cached(self) -> int:
        return sum(s == "cached" for s in self.stages.values())

    @classmethod
    def from_record(cls, run_dir: Path, record: dict[str, Any]) -> RunResult:
        err = record.get("error") or {}
        return cls(
            study=record["study"]["name"],
            run_dir=Path(run_dir),
            status=record.get("status", "failed"),
            stages={k: v.get("status", "pending") for k, v in record.get("stages", {}).items()},
            failed_stage=err.get("stage"),
            error=err.get("message"),
            outputs=record.get("outputs", {}),
            duration_s=float(record.get("duration_s") or 0.0),
            refused=bool(err.get("preflight")),
            warnings=[f"{name}: {w}" for name, st in record.get("stages", {}).items() for w in st.get("warnings", [])],
        )


def output_files_of(run_dir: Path, paths: Sequence[str]) -> list[Path]:
    """The files behind a run's output entries (a files artifact is a folder: its files,
    without the manifest), in order."""
    out: list[Path] = []
    for rel in paths:
        p = Path(run_dir) / rel
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.name != "manifest.json"))
        elif p.is_file():
            out.append(p)
    return out


def study_name_of(path: str | Path) -> str:
    """``/data/case_001.nii.gz`` -> ``case_001``; a folder keeps its name."""
    name = Path(path).resolve().name
    for suf in _STUDY_SUFFIXES:
        if name.lower().endswith(suf) and len(name) > len(suf):
            return name[: -len(suf)]
    return name


def _library_of(exc: BaseException) -> str | None:
    """The top-level package of the deepest traceback frame outside medpipe (``highdicom``)."""
    import medpipe

    ours = str(Path(medpipe.__file__).resolve().parent)
    tb, lib = exc.__traceback__, None
    while tb is not None:
        fname = tb.tb_frame.f_code.co_filename
        if "site-packages" in fname and not fname.startswith(ours):
            lib = fname.split("site-packages", 1)[1].strip("/\\").split("/")[0].split(".")[0]
        tb = tb.tb_next
    return lib


def _one_line(exc: BaseException, stage: str = "") -> str:
    """One sentence for run.json and the summary (the log keeps the traceback)."""
    if isinstance(exc, MedpipeError):
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    msg = str(exc).strip().splitlines()
    what = f"{type(exc).__name__}: {msg[0]}" if msg else type(exc).__name__
    lib = _library_of(exc)
    where = f" inside {lib}" if lib else ""
    log = f"; the traceback is in logs/{stage}.log" if stage else ""
    return f"unexpected error{where} ({what}){log}"


def _pid_alive(pid: int) -> bool:
    import psutil

    return psutil.pid_exists(pid)


class _StudyRun:
    """The state of one study's run directory, shared by run_pipeline and run_stage."""

    def __init__(
        self,
        spec: PipelineSpec,
        run_dir: Path,
        study: str,
        *,
        device: str = "cpu",
        force: bool = False,
        events: EventSink | None = None,
    ) -> None:
        self.spec = spec
        self.run_dir = run_dir
        self.study = study
        self.device = device
        self.force = force
        self.events = events or (lambda e: None)
        self.artifacts = run_dir / "artifacts"
        self.logs = run_dir / "logs"
        self.hashes: dict[str, str] = {}  # "stage.output" -> content hash
        self.values: dict[str, Any] = {}  # in-memory outputs still needed downstream
        self.versions = software_versions()

    # -- files ---------------------------------------------------------------------------
    def stage_dir(self, stage: str) -> Path:
        return self.artifacts / stage

    def clean_stale_temps(self) -> None:
        """Remove temp folders of stages whose process is gone (a crash or kill)."""
        if not self.artifacts.is_dir():
            return
        for tmp in self.artifacts.glob(".*.tmp-*"):
            try:
                pid = int(tmp.name.rsplit(".tmp-", 1)[1].split("-")[0])
            except (IndexError, ValueError):
                continue
            if pid != os.getpid() and not _pid_alive(pid):
                shutil.rmtree(tmp, ignore_errors=True)

    def set_input(self, study_path: Path) -> None:
        study_hash = hash_study(study_path)
        folder = self.stage_dir(INPUT_STAGE)
        rec = _read_json(folder / RECORD)
        if rec.get("hash") != study_hash or rec.get("path") != str(study_path.resolve()):
            self._publish(INPUT_STAGE, lambda tmp: self._write_input(tmp, study_path, study_hash))
        self.hashes[f"{INPUT_STAGE}.study"] = study_hash
        self.values[f"{INPUT_STAGE}.study"] = study_path.resolve()

    def load_input(self) -> Path:
        rec = _read_json(self.stage_dir(INPUT_STAGE) / RECORD)
        if not rec:
            raise PipelineError(f"{self.run_dir}: no study recorded yet; pass the study path")
        self.hashes[f"{INPUT_STAGE}.study"] = rec["hash"]
        return Path(rec["path"])

    @staticmethod
    def _write_input(tmp: Path, study_path: Path, study_hash: str) -> None:
        StudyInputArtifact.save(study_path, tmp / "study")
        (tmp / RECORD).write_text(
            json.dumps({"path": str(study_path.resolve()), "hash": study_hash}, indent=2) + "\n"
        )

    def _publish(self, stage: str, fill: Callable[[Path], None]) -> None:
        """Fill a fresh temp folder and rename it to ``artifacts/<stage>``; all or nothing."""
        with atomic_dir(self.stage_dir(stage), overwrite=True, tmp_prefix=f".{stage}.tmp-{os.getpid()}-") as tmp:
            fill(tmp)

    # -- cache ---------------------------------------------------------------------------
    def key_of(self, stage: str) -> str:
        st = self.spec.stages[stage]
        cls = self.spec.stage_class(stage)
        inputs = {port: self.hashes[ref] for port, ref in sorted(st.inputs.items())}
        version = getattr(cls, "version", None)
        params = self.spec.resolved_params(stage)
        # content only, in the stage's order: a bundle installed elsewhere (a container, another
        # node) with the same files gives the same key
        external = [hash_external(p) for p in cls.external_inputs(cls.Params(**params))]
        return stage_key(
            st.kind, params, inputs, self.versions["medpipe"] or "",
            None if version is None else str(version), external,
        )

    def completed(self, stage: str, key: str | None) -> dict[str, str] | None:
        """Output hashes of a finished stage whose files verify (and whose key matches)."""
        folder = self.stage_dir(stage)
        rec = _read_json(folder / RECORD)
        if not rec or (key is not None and rec.get("key") != key):
            return None
        outs = self.spec.stage_class(stage).outputs
        hashes: dict[str, str] = {}
        for out in outs:
            files = rec.get("files", {}).get(out)
            if files is None or not all((folder / f).exists() for f in files):
                return None
            h = hash_files([folder / f for f in files], folder)
            if h != rec.get("hashes", {}).get(out):
                return None
            hashes[out] = h
        return hashes

    def value(self, ref: str) -> Any:
        if ref not in self.values:
            stage, out = split_ref(ref)
            typ = self.spec.output_type(ref)
            return typ.load(self.stage_dir(stage) / out)
        return self.values[ref]

    # -- running one stage -----------------------------------------------------------------
    def execute(self, stage: str, key: str) -> dict[str, Any]:
        """Run ``stage`` in its temp folder and publish its outputs; returns its record."""
        st = self.spec.stages[stage]
        cls = self.spec.stage_class(stage)
        started = time.perf_counter()
        kept: dict[str, Any] = {}
        entry: dict[str, Any] = {}

        def tracker(iterable: Iterable[Any], total: int | None = None, description: str = ""):
            if total is None and hasattr(iterable, "__len__"):
                total = len(iterable)  # type: ignore[arg-type]
            for i, item in enumerate(iterable, 1):
                yield item
                self.events({"event": "track", "study": self.study, "stage": stage,
                             "completed": i, "total": total, "description": description})

        def fill(tmp: Path) -> None:
            workdir = tmp / "work"
            workdir.mkdir()
            ctx = StageContext(stage=stage, workdir=workdir, study=self.study, device=self.device, tracker=tracker)
            inputs = {port: self.value(ref) for port, ref in st.inputs.items()}
            instance = self.spec.build_stage(stage)
            # what a scheduler grants this stage, so every engine computes it with the same threads
            with stage_threads(self.spec.stage_resources(stage).threads), PeakMemory() as mem:
                result = instance.run(inputs, ctx)
            if not isinstance(result, dict):
                raise PipelineError(f"stage {stage!r} ({st.kind}) returned {type(result).__name__}, not a dict of outputs")
            missing = [o for o in cls.outputs if o not in result]
            extra = [o for o in result if o not in cls.outputs]
            if missing or extra:
                raise PipelineError(
                    f"stage {stage!r} ({st.kind}) returned outputs {sorted(result)}, declared {sorted(cls.outputs)}"
                )
            files: dict[str, list[str]] = {}
            hashes: dict[str, str] = {}
            for out, typ in cls.outputs.items():
                typ.check(result[out], f"output {out!r} of stage {stage!r}")
                written = typ.save(result[out], tmp / out)
                files[out] = sorted({str(Path(w).relative_to(tmp).parts[0]) for w in written})
                hashes[out] = hash_files([tmp / f for f in files[out]], tmp)
                # consumers get exactly what a separate process would load (pipeline.artifacts);
                # types without a cheap canonical form (files point into work/) are re-read
                same = typ.canonical(result[out])
                if same is not None:
                    kept[f"{stage}.{out}"] = same
            shutil.rmtree(workdir, ignore_errors=True)
            entry.update(
                key=key, kind=st.kind, params=self.spec.resolved_params(stage), files=files, hashes=hashes,
                facts=ctx.facts, warnings=list(ctx.warnings), peak_rss_mb=mem.peak_mb,
            )
            (tmp / RECORD).write_text(json.dumps(entry, indent=2, default=json_default_lenient) + "\n")
            if ctx.warnings:
                self._write_log(stage, "\n".join(f"warning: {w}" for w in ctx.warnings))

        self._publish(stage, fill)
        for out, h in entry["hashes"].items():
            self.hashes[f"{stage}.{out}"] = h
        self.values.update(kept)
        entry["duration_s"] = round(time.perf_counter() - started, 3)
        return entry

    def _write_log(self, stage: str, text: str) -> None:
        from medpipe.io.atomic import atomic_path

        with atomic_path(self.logs / f"{stage}.log") as tmp:
            tmp.write_text(text + "\n")

    def run_one(self, stage: str) -> dict[str, Any]:
        """Run or reuse ``stage``; returns its run.json entry (status done/cached/failed)."""
        st = self.spec.stages[stage]
        key = self.key_of(stage)
        entry: dict[str, Any] = {"kind": st.kind, "key": key, "started": now_iso()}
        cached = None if self.force else self.completed(stage, key)
        if cached is not None:
            for out, h in cached.items():
                self.hashes[f"{stage}.{out}"] = h
            rec = _read_json(self.stage_dir(stage) / RECORD)
            entry.update(status="cached", finished=now_iso(), duration_s=0.0, facts=rec.get("facts", {}),
                         warnings=rec.get("warnings", []))
            return entry
        try:
            done = self.execute(stage, key)
        except (Exception, SystemExit) as exc:  # a stage calling sys.exit is a failed stage too
            entry.update(status="failed", finished=now_iso(), error=_one_line(exc, stage))
            self._write_log(stage, f"stage {stage!r} ({st.kind}) failed on study {self.study!r}\n\n"
                            + "".join(traceback.format_exception(exc)))
            return entry
        entry.update(status="done", finished=now_iso(), duration_s=done["duration_s"],
                     peak_rss_mb=done["peak_rss_mb"], facts=done["facts"], warnings=done["warnings"])
        return entry

    def output_files(self, refs: Sequence[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for ref in refs:
            stage, name = split_ref(ref)
            rec = _read_json(self.stage_dir(stage) / RECORD)
            files = rec.get("files", {}).get(name)
            if files:
                out[ref] = [str(Path("artifacts") / stage / f) for f in files]
        return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _as_spec(spec: PipelineSpec | str | Path, overrides: Sequence[str] | None) -> PipelineSpec:
    if not isinstance(spec, PipelineSpec):
        return load_pipeline(spec, overrides or ())
    return spec.with_overrides(overrides) if overrides else spec


def _base_record(spec: PipelineSpec, graph: PipelineGraph, study: str, study_path: Path | None, device: str) -> dict[str, Any]:
    return {
        "schema": RUN_SCHEMA,
        "pipeline": {
            "name": spec.name, "description": spec.description, "version": spec.version,
            "file": spec.source, "file_hash": spec.file_hash, "overrides": spec.overrides,
        },
        "params": {n: {"kind": spec.stages[n].kind, "params": spec.resolved_params(n),
                       "inputs": dict(spec.stages[n].inputs)} for n in graph.order},
        "study": {"name": study, "path": str(study_path.resolve()) if study_path else None, "hash": None},
        "device": device,
        "versions": software_versions(),
        "host": host_info(),
        "status": "running",
        "started": now_iso(),
        "finished": None,
        "duration_s": None,
        "peak_rss_mb": None,
        "stages": {n: {"kind": spec.stages[n].kind, "status": "pending"} for n in graph.order},
        "outputs": {},
        "error": None,
    }


def run_pipeline(
    spec: PipelineSpec | str | Path,
    study_path: str | Path,
    out_dir: str | Path,
    *,
    device: str = "cpu",
    overrides: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    force: bool = False,
    study_name: str | None = None,
    events: EventSink | None = None,
) -> RunResult:
    """Run ``spec`` on one study into ``out_dir/<study>/``; stages whose inputs and params
    are unchanged are reused, a crashed run resumes. Stage failures are recorded, not raised.

    Example:
        >>> result = run_pipeline("ct-organs", "study_dir", "out")   # doctest: +SKIP
        >>> result.status, result.stages
    """
    spec = _as_spec(spec, overrides)
    study_path = Path(study_path)
    if not study_path.exists():
        raise InputError(f"study {study_path} does not exist")
    study = study_name or study_name_of(study_path)
    run_dir = Path(out_dir) / study
    graph = _target_graph(spec, targets)
    run_dir.mkdir(parents=True, exist_ok=True)
    with locked(run_dir / ".lock", blocking=False) as ok:
        if not ok:
            raise PipelineError(f"{run_dir} is in use by another medpipe run")
        return _run_locked(spec, graph, run_dir, study, study_path, device, force, events)


def _run_locked(
    spec: PipelineSpec, graph: PipelineGraph, run_dir: Path, study: str, study_path: Path,
    device: str, force: bool, events: EventSink | None,
) -> RunResult:
    run = _StudyRun(spec, run_dir, study, device=device, force=force, events=events)
    emit = run.events
    record = _base_record(spec, graph, study, study_path, device)
    t0 = time.perf_counter()

    def save() -> None:
        record["peak_rss_mb"] = process_peak_rss_mb()
        write_run_record(run_dir, record)

    run.clean_stale_temps()
    emit({"event": "study_start", "study": study, "stages": list(graph.order)})
    run.set_input(study_path)
    record["study"]["hash"] = run.hashes[f"{INPUT_STAGE}.study"]
    save()
    refusal = run_preflight(spec, list(graph.order), study, study_path)
    if refusal is not None:  # refused before any stage ran: nothing is computed or published
        stage, message = refusal
        for name in graph.order:
            record["stages"][name]["status"] = "skipped"
            emit({"event": "stage_end", "study": study, "stage": name, "status": "skipped"})
        record.update(status="failed", finished=now_iso(), duration_s=round(time.perf_counter() - t0, 3),
                      error={"stage": stage, "message": message, "preflight": True})
        save()
        result = RunResult.from_record(run_dir, record)
        emit({"event": "study_end", "study": study, "status": result.status})
        return result

    remaining = {ref: len(users) for ref, users in spec.consumers().items()}
    failed: str | None = None
    for name in graph.order:
        entry = record["stages"][name]
        if failed is not None:
            entry["status"] = "skipped"
            emit({"event": "stage_end", "study": study, "stage": name, "status": "skipped"})
            continue
        entry.update(status="running", started=now_iso())
        save()
        emit({"event": "stage_start", "study": study, "stage": name})
        entry.clear()
        entry.update(run.run_one(name))
        emit({"event": "stage_end", "study": study, "stage": name, "status": entry["status"],
              "error": entry.get("error")})
        if entry["status"] == "failed":
            failed = name
            record["error"] = {"stage": name, "message": entry["error"]}
        for ref in spec.stages[name].inputs.values():  # free what nobody downstream needs
            remaining[ref] = remaining.get(ref, 1) - 1
            if remaining[ref] <= 0:
                run.values.pop(ref, None)
        save()

    record["status"] = "failed" if failed else "done"
    record["finished"] = now_iso()
    record["duration_s"] = round(time.perf_counter() - t0, 3)
    results = [r for r in spec.result_refs() if split_ref(r)[0] in graph]
    record["outputs"] = run.output_files(results)
    save()
    result = RunResult.from_record(run_dir, record)
    emit({"event": "study_end", "study": study, "status": result.status})
    return result


def _target_graph(spec: PipelineSpec, targets: Sequence[str] | None) -> PipelineGraph:
    """What a run computes: the stages the targets (default: the pipeline's outputs) need."""
    graph = PipelineGraph(spec)
    want = list(targets or spec.outputs)
    return graph.subgraph(want) if want else graph


def run_stage(
    spec: PipelineSpec | str | Path,
    stage: str,
    run_dir: str | Path,
    *,
    study_path: str | Path | None = None,
    device: str = "cpu",
    overrides: Sequence[str] | None = None,
    force: bool = False,
    targets: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run ONE stage of a study from the artifacts already in ``run_dir`` (``OUT/<study>``):
    the unit Snakemake and Airflow schedule. Upstream stages must have completed; a root
    stage runs the study's pre-run checks first. Publishes atomically, updates run.json
    and is a cache hit when nothing changed, exactly as in :func:`run_pipeline`, so the
    run directory ends the same. Returns the stage's run.json entry; raises
    ``PipelineError`` naming study and stage when the stage fails or is refused.

    Stages of one study may run concurrently (a shared lock); a whole-pipeline run of the
    same folder holds an exclusive one.
    """
    spec = _as_spec(spec, overrides)
    run_dir = Path(run_dir)
    if stage not in spec.stages:
        raise PipelineError(f"{spec.source}: no stage {stage!r} (stages: {', '.join(spec.stages)})")
    if study_path is not None and not Path(study_path).exists():
        raise InputError(f"study {study_path} does not exist")
    run_dir.mkdir(parents=True, exist_ok=True)
    with locked(run_dir / ".lock", blocking=False, shared=True) as ok:
        if not ok:
            raise PipelineError(f"{run_dir} is in use by a medpipe run of the whole pipeline")
        return _run_stage_locked(spec, stage, run_dir, study_path, device, force, _target_graph(spec, targets))


def _stage_input(run: _StudyRun, stage: str, study_path: str | Path | None) -> Path:
    """The study of this run folder: hashed by stages that read it, taken from the record by the others."""
    reads_study = f"{INPUT_STAGE}.study" in run.spec.stages[stage].inputs.values()
    recorded = _read_json(run.stage_dir(INPUT_STAGE) / RECORD)
    if study_path is None:
        return run.load_input()
    path = Path(study_path)
    if reads_study or not recorded:
        run.set_input(path)
        return path
    if recorded.get("path") != str(path.resolve()):
        raise PipelineError(f"{run.run_dir} holds the run of study {recorded.get('path')}, not {path}; "
                            "give each study its own run folder")
    return run.load_input()


def _run_stage_locked(
    spec: PipelineSpec, stage: str, run_dir: Path, study_path: str | Path | None, device: str, force: bool,
    graph: PipelineGraph,
) -> dict[str, Any]:
    study = run_dir.name
    run = _StudyRun(spec, run_dir, study, device=device, force=force)
    run.clean_stale_temps()
    path = _stage_input(run, stage, study_path)
    full = PipelineGraph(spec)
    for up in sorted(full.deps[stage]):
        hashes = run.completed(up, None)
        if hashes is None:
            raise PipelineError(
                f"stage {stage!r} of study {study!r} needs the outputs of stage {up!r}, which has not completed "
                f"in {run_dir}"
            )
        for out, h in hashes.items():
            run.hashes[f"{up}.{out}"] = h
    refusal = None
    if not full.deps[stage] and (force or run.completed(stage, run.key_of(stage)) is None):
        refusal = run_preflight(spec, list(graph.order), study, path)
    if refusal is not None:
        entry: dict[str, Any] = {"kind": spec.stages[stage].kind, "status": "skipped"}
        error = {"stage": refusal[0], "message": refusal[1], "preflight": True}
    else:
        entry = run.run_one(stage)
        error = {"stage": stage, "message": entry["error"]} if entry["status"] == "failed" else None
    with locked(run_dir / ".record.lock"):
        _record_stage(run, graph, stage, entry, error, path, device)
    if refusal is not None:
        raise PipelineError(f"study {study!r} was refused before running (check of stage {refusal[0]!r}): "
                            f"{refusal[1]}")
    if entry["status"] == "failed":
        raise PipelineError(f"stage {stage!r} failed on study {study!r}: {entry['error']}")
    return entry


def _record_stage(
    run: _StudyRun, graph: PipelineGraph, stage: str, entry: dict[str, Any], error: dict[str, Any] | None,
    study_path: Path, device: str,
) -> None:
    """Merge one stage's outcome into run.json (under the record lock): the same record a
    whole-pipeline run writes, assembled one stage at a time."""
    spec, run_dir = run.spec, run.run_dir
    base = _base_record(spec, graph, run.study, study_path, device)
    record = read_run_record(run_dir)
    if record is None or record.get("params") != base["params"] or record.get("pipeline") != base["pipeline"]:
        record = base  # a first stage, or the pipeline changed: the old entries describe another run
    record["study"]["hash"] = run.hashes[f"{INPUT_STAGE}.study"]
    record["host"], record["versions"] = base["host"], base["versions"]
    stages = record.setdefault("stages", {})
    stages[stage] = entry
    if error is not None and error.get("preflight"):
        for name in graph.order:
            stages[name] = {"kind": spec.stages[name].kind, "status": "skipped"}
    peaks = [e.get("peak_rss_mb") or 0.0 for e in stages.values()]
    record["peak_rss_mb"] = max(peaks) if peaks else None
    failed = [n for n in graph.order if stages.get(n, {}).get("status") == "failed"]
    if error is not None:
        record.update(status="failed", error=error, finished=now_iso())
    elif failed:
        record.update(status="failed", error={"stage": failed[0], "message": stages[failed[0]].get("error")})
    elif all(stages.get(n, {}).get("status") in ("done", "cached") for n in graph.order):
        record.update(status="done", error=None, finished=now_iso(),
                      outputs=run.output_files([r for r in spec.result_refs() if split_ref(r)[0] in graph]))
        record["duration_s"] = round(sum(float(stages[n].get("duration_s") or 0.0) for n in graph.order), 3)
    else:
        record.update(status="running", error=None)
    write_run_record(run_dir, record)
