"""The stage interface and the registry of stage kinds.

Adding a stage = one class in one module under ``medpipe/pipeline/stages/``, decorated
with ``@register_stage``. A stage declares typed inputs/outputs (artifact types) and a
pydantic ``Params`` model; ``run()`` takes artifacts and returns artifacts. Stages never
read global state and never write outside ``ctx.workdir``.

Example:
    >>> @register_stage
    ... class Invert(Stage):
    ...     kind = "invert"
    ...     description = "negate intensities"
    ...     class Params(StageParams):
    ...         scale: float = 1.0
    ...     inputs = {"image": ImageArtifact}
    ...     outputs = {"image": ImageArtifact}
    ...     def run(self, inputs, ctx):
    ...         img = inputs["image"]
    ...         return {"image": img.with_array(-self.params.scale * img.array)}
"""

from __future__ import annotations

import fnmatch
import importlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from medpipe.errors import PipelineError
from medpipe.pipeline.artifacts import Artifact

__all__ = [
    "Stage",
    "StageParams",
    "StageContext",
    "StageResources",
    "STAGE_MODULES_ENV",
    "register_stage",
    "get_stage",
    "list_stages",
]

T = TypeVar("T")


class StageParams(BaseModel):
    """Base for stage parameter models: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StageResources(BaseModel):
    """What one run of a stage asks a scheduler for (Snakemake ``threads``/``resources``,
    SLURM ``--cpus-per-task``/``--mem``/``--gpus``, Airflow pool slots).

    A stage kind declares typical values; a pipeline file may override them per stage
    (``resources: {threads: 4, mem_mb: 12000}``). They are not part of the cache key; the
    thread count a stage is granted (``threads``, capped by the cores) is also the count every
    engine computes it with (``medpipe.threads.stage_threads``), so engines agree byte for byte. ``gpu`` says the stage can use one (it is requested only
    when the run's device is ``cuda``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    threads: int = Field(1, ge=1, le=256)
    mem_mb: int = Field(1000, ge=16)
    gpu: bool = False


@dataclass
class StageContext:
    """What the runner hands a stage: where it may write, which device, how to report."""

    stage: str
    workdir: Path
    study: str = ""
    device: str = "cpu"
    warnings: list[str] = field(default_factory=list)
    # The runner replaces this with a rich progress bar; the default just iterates.
    tracker: Callable[..., Iterable[Any]] | None = None
    # Free-form facts a stage wants in run.json (e.g. peak inference memory).
    facts: dict[str, Any] = field(default_factory=dict)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def track(self, iterable: Iterable[T], total: int | None = None, description: str = "") -> Iterator[T]:
        if self.tracker is None:
            yield from iterable
        else:
            yield from self.tracker(iterable, total=total, description=description)


class Stage:
    """Base class of every stage kind."""

    kind: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type[StageParams]] = StageParams
    inputs: ClassVar[dict[str, type[Artifact]]] = {}
    optional_inputs: ClassVar[frozenset[str]] = frozenset()
    outputs: ClassVar[dict[str, type[Artifact]]] = {}
    resources: ClassVar[StageResources] = StageResources()

    def __init__(self, params: StageParams | dict[str, Any] | None = None) -> None:
        if params is None or isinstance(params, dict):
            params = self.Params(**(params or {}))
        self.params = params

    def run(self, inputs: dict[str, Any], ctx: StageContext) -> dict[str, Any]:
        raise NotImplementedError(f"stage kind {self.kind!r} does not implement run()")

    @classmethod
    def preflight(cls, params: StageParams, ctx: Any) -> Any:
        """Cheap checks before any stage of the study runs (``pipeline.preflight``): raise a
        ``MedpipeError`` to refuse the study; return what was learnt for later stages."""
        return None

    @classmethod
    def external_inputs(cls, params: StageParams) -> list[Path]:
        """Files outside the run that the result depends on, hashed into the cache key so a
        retrained or re-quantised bundle makes the stage run again (a ``bundle`` parameter
        names one; stages with other external files override this)."""
        bundle = getattr(params, "bundle", None)
        if not bundle:
            return []
        from medpipe.models.bundle import resolve_bundle_path

        path = resolve_bundle_path(str(bundle))
        return [path] if path.exists() else []  # a missing bundle fails in run() with its own message


_REGISTRY: dict[str, type[Stage]] = {}


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make a stage kind available to pipeline files by its ``kind``."""
    kind = getattr(cls, "kind", None)
    if not kind or not isinstance(kind, str):
        raise TypeError(f"{cls.__name__} needs a string class attribute 'kind'")
    if kind in _REGISTRY and _REGISTRY[kind] is not cls:
        raise TypeError(f"stage kind {kind!r} is registered twice ({_REGISTRY[kind].__name__}, {cls.__name__})")
    if not getattr(cls, "description", ""):
        raise TypeError(f"stage kind {kind!r} needs a one-line description")
    _REGISTRY[kind] = cls
    return cls


# Modules outside medpipe that register stage kinds, imported on first lookup in every process
# (``medpipe stage`` under Snakemake/Airflow runs in a fresh one): ``mylab.stages:other.mod``.
STAGE_MODULES_ENV = "MEDPIPE_STAGE_MODULES"
_loaded_env: set[str] = set()


def _load_env_modules() -> None:
    for name in os.environ.get(STAGE_MODULES_ENV, "").replace(",", os.pathsep).split(os.pathsep):
        name = name.strip()
        if not name or name in _loaded_env:
            continue
        try:
            importlib.import_module(name)
        except Exception as exc:  # one sentence, whatever the module raised
            raise PipelineError(
                f"{STAGE_MODULES_ENV}: cannot import stage module {name!r} ({type(exc).__name__}: {exc})"
            ) from None
        _loaded_env.add(name)


def get_stage(kind: str) -> type[Stage]:
    """The class registered for ``kind``. The built-in kinds are registered when
    ``medpipe.pipeline`` is imported (``medpipe.pipeline.stages``); modules named in
    ``$MEDPIPE_STAGE_MODULES`` are imported here, on the first lookup."""
    if kind not in _REGISTRY:
        _load_env_modules()
    try:
        return _REGISTRY[kind]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise PipelineError(f"unknown stage kind {kind!r}; known kinds: {known}") from None


def list_stages(pattern: str = "*") -> list[str]:
    _load_env_modules()
    return sorted(k for k in _REGISTRY if fnmatch.fnmatch(k, pattern))
