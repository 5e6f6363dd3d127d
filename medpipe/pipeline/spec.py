"""Pipeline files: the YAML schema and its validation, done before anything runs.

A pipeline file declares a DAG of stages::

    name: ct-organs
    description: Segment abdominal organs on a CT study
    stages:
      load:    {kind: load_study, inputs: {study: input.study}}
      seg:     {kind: segment, params: {model: stunet-s}, inputs: {image: load.image},
                resources: {threads: 4, mem_mb: 8000}}     # optional: what a scheduler grants
    outputs: [seg.labels]

Why our own validation rather than pydantic errors as they come: a person reading an
error must see the file, the stage and the field in one sentence, and the checks that
matter most (stage kinds, parameter models, port types, cycles) span several models.
``input.study`` is the one pseudo-output the runner provides (the study's path, a
:class:`~medpipe.pipeline.artifacts.StudyInputArtifact`).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

import medpipe.pipeline.stages  # noqa: F401  (registers the built-in stage kinds)
from medpipe.errors import PipelineError
from medpipe.pipeline.artifacts import Artifact, StudyInputArtifact
from medpipe.pipeline.graph import INPUT_STAGE, split_ref, stage_dependencies, topological_order
from medpipe.pipeline.stage import Stage, StageResources, get_stage, list_stages

__all__ = [
    "INPUT_OUTPUTS",
    "StageSpec",
    "PipelineSpec",
    "load_pipeline",
    "parse_pipeline",
    "parse_override",
    "shipped_pipelines",
    "pipeline_dirs",
]

# What the ``input`` pseudo-stage provides.
INPUT_OUTPUTS: dict[str, type[Artifact]] = {"study": StudyInputArtifact}

_STAGE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


class StageSpec(BaseModel):
    """One stage of a pipeline file: its kind, parameters and where its inputs come from."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, str] = Field(default_factory=dict)
    # Overrides of the kind's declared StageResources (threads, mem_mb, gpu) for engines.
    resources: dict[str, Any] = Field(default_factory=dict)


class PipelineSpec(BaseModel):
    """A validated pipeline file. Build it with :func:`load_pipeline` or :func:`parse_pipeline`."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str
    version: str | None = None
    stages: dict[str, StageSpec]
    # Refs ("stage.output" or "stage") that are the pipeline's results: the default run
    # targets, listed in run.json and the run summary. Empty = every stage runs and the
    # outputs of stages nobody consumes are the results.
    outputs: list[str] = Field(default_factory=list)

    _source: str = PrivateAttr(default="<pipeline>")
    _file_hash: str = PrivateAttr(default="")
    _overrides: list[str] = PrivateAttr(default_factory=list)

    # -- what validation established --------------------------------------------------
    @property
    def source(self) -> str:
        """The file this spec came from (or ``<pipeline>`` for a dict)."""
        return self._source

    @property
    def file_hash(self) -> str:
        """blake2b of the pipeline file's bytes (of its canonical YAML for a dict)."""
        return self._file_hash

    @property
    def overrides(self) -> list[str]:
        return list(self._overrides)

    def stage_class(self, name: str) -> type[Stage]:
        return get_stage(self.stages[name].kind)

    def build_stage(self, name: str) -> Stage:
        """An instance of stage ``name`` with its validated parameters."""
        return self.stage_class(name)(self.stages[name].params)

    def stage_resources(self, name: str) -> StageResources:
        """The kind's declared resources with this file's ``resources:`` overrides applied."""
        declared = self.stage_class(name).resources
        return StageResources(**{**declared.model_dump(), **self.stages[name].resources})

    def resolved_params(self, name: str) -> dict[str, Any]:
        """Parameters of ``name`` with defaults filled in, as JSON values."""
        cls = self.stage_class(name)
        return cls.Params(**self.stages[name].params).model_dump(mode="json")

    def output_type(self, ref: str) -> type[Artifact]:
        stage, out = split_ref(ref)
        if stage == INPUT_STAGE:
            return INPUT_OUTPUTS[out]
        return self.stage_class(stage).outputs[out]

    def consumers(self) -> dict[str, list[tuple[str, str]]]:
        """``"stage.output"`` -> [(consumer stage, port)]."""
        out: dict[str, list[tuple[str, str]]] = {}
        for name, st in self.stages.items():
            for port, ref in st.inputs.items():
                out.setdefault(ref, []).append((name, port))
        return out

    def result_refs(self) -> list[str]:
        """The pipeline's results: ``outputs`` if declared, else outputs nobody consumes."""
        if self.outputs:
            refs: list[str] = []
            for r in self.outputs:
                if "." in r:
                    refs.append(r)
                else:
                    refs.extend(f"{r}.{o}" for o in self.stage_class(r).outputs)
            return refs
        used = self.consumers()
        return [
            f"{name}.{o}"
            for name in self.stages
            for o in self.stage_class(name).outputs
            if f"{name}.{o}" not in used
        ]

    def with_overrides(self, overrides: Sequence[str]) -> PipelineSpec:
        """A new, re-validated spec with ``stage.param=value`` overrides applied."""
        raw = self.model_dump(mode="json")
        spec = _validate(_apply_overrides(raw, overrides, self._source), self._source)
        spec._file_hash = self._file_hash
        spec._overrides = [*self._overrides, *overrides]
        return spec

    def payload(self) -> dict[str, Any]:
        """Everything needed to rebuild this spec in another process."""
        return {
            "raw": self.model_dump(mode="json"),
            "source": self._source,
            "file_hash": self._file_hash,
            "overrides": list(self._overrides),
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> PipelineSpec:
        spec = _validate(payload["raw"], payload["source"])
        spec._file_hash = payload["file_hash"]
        spec._overrides = list(payload["overrides"])
        return spec


# -- finding pipeline files ---------------------------------------------------------------
def pipeline_dirs() -> list[Path]:
    """Where shipped pipelines live: ``$MEDPIPE_PIPELINES`` (os.pathsep-separated),
    the source checkout's ``pipelines/``, then the copy packaged inside ``medpipe``."""
    dirs: list[Path] = []
    env = os.environ.get("MEDPIPE_PIPELINES", "")
    dirs.extend(Path(p) for p in env.split(os.pathsep) if p)
    repo = Path(__file__).resolve().parents[2] / "pipelines"
    dirs.append(repo)
    try:
        packaged = resources.files("medpipe") / "pipelines"
        dirs.append(Path(str(packaged)))
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - zipped installs
        pass
    seen: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [s.resolve() for s in seen]:
            seen.append(d)
    return seen


def shipped_pipelines() -> dict[str, Path]:
    """Shipped pipeline name -> file (first directory in :func:`pipeline_dirs` wins)."""
    found: dict[str, Path] = {}
    for d in pipeline_dirs():
        for f in sorted([*d.glob("*.yaml"), *d.glob("*.yml")]):
            found.setdefault(f.stem, f)
    return found


def _resolve(path_or_name: str | Path) -> Path:
    p = Path(path_or_name)
    if p.is_file():
        return p
    if p.suffix in (".yaml", ".yml") or p.parent != Path("."):
        raise PipelineError(f"pipeline file {p} does not exist")
    shipped = shipped_pipelines()
    if str(path_or_name) in shipped:
        return shipped[str(path_or_name)]
    known = ", ".join(sorted(shipped)) or "none found"
    raise PipelineError(
        f"{path_or_name!r} is neither a pipeline file nor a shipped pipeline (shipped: {known})"
    )


def load_pipeline(path_or_name: str | Path, overrides: Sequence[str] = ()) -> PipelineSpec:
    """Read, override and validate a pipeline file (a path or a shipped name)."""
    path = _resolve(path_or_name)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"{path}: cannot read the pipeline file ({exc})") from None
    return parse_pipeline(text, source=str(path), overrides=overrides)


def parse_pipeline(
    text_or_dict: str | dict[str, Any], source: str = "<pipeline>", overrides: Sequence[str] = ()
) -> PipelineSpec:
    """Validate a pipeline given as YAML text or an already-parsed dict."""
    if isinstance(text_or_dict, str):
        raw = _parse_yaml(text_or_dict, source)
        file_hash = hashlib.blake2b(text_or_dict.encode(), digest_size=16).hexdigest()
    else:
        raw = text_or_dict
        canon = yaml.safe_dump(raw, sort_keys=True)
        file_hash = hashlib.blake2b(canon.encode(), digest_size=16).hexdigest()
    raw = _apply_overrides(raw, overrides, source)
    spec = _validate(raw, source)
    spec._file_hash = file_hash
    spec._overrides = list(overrides)
    return spec


def _parse_yaml(text: str, source: str) -> Any:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PipelineError(f"{source}: invalid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise PipelineError(
            f"{source}: a pipeline file must be a YAML mapping with name, description and stages"
        )
    return raw


# -- overrides ----------------------------------------------------------------------------
def parse_override(text: str) -> tuple[str, list[str], Any]:
    """``"seg.threshold=0.5"`` -> ("seg", ["threshold"], 0.5); values are YAML scalars."""
    key, sep, value = text.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise PipelineError(f"--set {text!r}: expected stage.param=value (e.g. --set seg.threshold=0.5)")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return parts[0], parts[1:], parsed


def _apply_overrides(raw: dict[str, Any], overrides: Sequence[str], source: str) -> dict[str, Any]:
    if not overrides:
        return raw
    import copy

    raw = copy.deepcopy(raw)
    stages = raw.get("stages")
    if not isinstance(stages, dict):
        raise PipelineError(f"{source}: cannot apply --set: the pipeline has no 'stages' mapping")
    for text in overrides:
        stage, path, value = parse_override(text)
        if stage not in stages:
            raise PipelineError(
                f"--set {text}: {source} has no stage {stage!r} (stages: {', '.join(stages)})"
            )
        node = stages[stage].setdefault("params", {}) if isinstance(stages[stage], dict) else None
        if node is None:
            raise PipelineError(f"{source}: stage {stage!r} must be a mapping")
        for p in path[:-1]:
            nxt = node.get(p)
            if not isinstance(nxt, dict):
                nxt = {}
                node[p] = nxt
            node = nxt
        node[path[-1]] = value
    return raw


# -- validation -----------------------------------------------------------------------------
def _pydantic_reason(exc: ValidationError, known: Iterable[str] = ()) -> tuple[str, str]:
    """(field path, one-sentence reason) of the first pydantic error."""
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        known_s = ", ".join(known)
        return loc, f"unknown field {loc!r}" + (f" (known: {known_s})" if known_s else "")
    if kind == "missing":
        return loc, f"missing required field {loc!r}"
    got = err.get("input")
    got_s = f" (got {got!r})" if got is not None and not isinstance(got, dict) else ""
    return loc, f"{loc!r}: {err['msg']}{got_s}"


def _validate(raw: dict[str, Any], source: str) -> PipelineSpec:
    # Top level and stage shapes first, with the stage named in the message.
    stages_raw = raw.get("stages")
    if isinstance(stages_raw, dict):
        for name, st in stages_raw.items():
            where = f"{source}: stage {name!r}"
            if not isinstance(name, str) or not _STAGE_NAME.match(name) or name == INPUT_STAGE:
                raise PipelineError(
                    f"{where}: a stage name must be letters, digits, '_' or '-' and not {INPUT_STAGE!r}"
                )
            if not isinstance(st, dict):
                raise PipelineError(f"{where} must be a mapping with kind, params and inputs")
            try:
                StageSpec(**st)
            except ValidationError as exc:
                _, reason = _pydantic_reason(exc, ("kind", "params", "inputs", "resources"))
                raise PipelineError(f"{where}: {reason}") from None
    try:
        spec = PipelineSpec(**raw)
    except ValidationError as exc:
        _, reason = _pydantic_reason(exc, ("name", "description", "version", "stages", "outputs"))
        raise PipelineError(f"{source}: {reason}") from None
    spec._source = source
    if not spec.stages:
        raise PipelineError(f"{source}: the pipeline has no stages")
    if "\n" in spec.description.strip():
        raise PipelineError(f"{source}: 'description' must be one line")

    for name, st in spec.stages.items():
        where = f"{source}: stage {name!r}"
        try:
            cls = get_stage(st.kind)
        except PipelineError:
            raise PipelineError(
                f"{where}: unknown kind {st.kind!r} (known kinds: {', '.join(list_stages())})"
            ) from None
        try:
            cls.Params(**st.params)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(x) for x in err["loc"])
            if err["type"] == "extra_forbidden":
                known = ", ".join(cls.Params.model_fields) or "none"
                raise PipelineError(f"{where}: unknown param {loc!r} for kind {st.kind!r} (known: {known})") from None
            if err["type"] == "missing":
                raise PipelineError(f"{where}: missing required param {loc!r} for kind {st.kind!r}") from None
            got = err.get("input")
            raise PipelineError(f"{where}: param {loc!r}: {err['msg']} (got {got!r})") from None
        try:
            StageResources(**{**cls.resources.model_dump(), **st.resources})
        except ValidationError as exc:
            _, reason = _pydantic_reason(exc, tuple(StageResources.model_fields))
            raise PipelineError(f"{where}: resources: {reason}") from None
    for name in spec.stages:  # ports last: every kind is known by now
        _check_inputs(spec, name, spec.stage_class(name), f"{source}: stage {name!r}")

    for ref in spec.outputs:
        stage, out = split_ref(ref)
        if stage not in spec.stages:
            raise PipelineError(f"{source}: outputs: {ref!r} names no stage (stages: {', '.join(spec.stages)})")
        outs = spec.stage_class(stage).outputs
        if out and out not in outs:
            raise PipelineError(f"{source}: outputs: stage {stage!r} has no output {out!r} (outputs: {', '.join(outs)})")

    try:
        topological_order(stage_dependencies(spec.stages))
    except PipelineError as exc:
        raise PipelineError(f"{source}: {exc}") from None
    return spec


def _check_inputs(spec: PipelineSpec, name: str, cls: type[Stage], where: str) -> None:
    st = spec.stages[name]
    for port in st.inputs:
        if port not in cls.inputs:
            known = ", ".join(cls.inputs) or "none"
            raise PipelineError(f"{where}: unknown input port {port!r} for kind {st.kind!r} (ports: {known})")
    for port in cls.inputs:
        if port not in st.inputs and port not in cls.optional_inputs:
            raise PipelineError(
                f"{where}: input port {port!r} of kind {st.kind!r} is not connected "
                f"(add inputs: {{{port}: <stage>.<output>}})"
            )
    for port, ref in st.inputs.items():
        src, _, out = ref.partition(".")
        if not src or not out:
            raise PipelineError(f"{where}: input {port!r}: {ref!r} is not of the form stage.output")
        if src == INPUT_STAGE:
            outs: dict[str, type[Artifact]] = INPUT_OUTPUTS
        elif src in spec.stages:
            try:
                outs = get_stage(spec.stages[src].kind).outputs
            except PipelineError:
                raise PipelineError(f"{where}: input {port!r} refers to stage {src!r} of unknown kind") from None
        else:
            raise PipelineError(
                f"{where}: input {port!r} refers to stage {src!r}, which does not exist "
                f"(stages: {', '.join(spec.stages)}; the study is {INPUT_STAGE}.study)"
            )
        if out not in outs:
            raise PipelineError(
                f"{where}: input {port!r} refers to {ref!r}, but stage {src!r} has no output {out!r} "
                f"(outputs: {', '.join(outs) or 'none'})"
            )
        want, got = cls.inputs[port], outs[out]
        if not want.accepts(got):
            raise PipelineError(
                f"{where}: input {port!r} expects {want.name} but {ref!r} is {got.name}"
            )
