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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

from medpipe.errors import PipelineError
from medpipe.pipeline.artifacts import Artifact

__all__ = [
    "Stage",
    "StageParams",
    "StageContext",
    "register_stage",
    "get_stage",
    "list_stages",
]

T = TypeVar("T")


class StageParams(BaseModel):
    """Base for stage parameter models: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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


STAGE_MODULES_ENV = "MEDPIPE_STAGE_MODULES"
_plugins_loaded = False


def _ensure_builtin() -> None:
    """Register the built-in kinds, then the modules named in ``$MEDPIPE_STAGE_MODULES``
    (comma-separated importable names: a site's own stage kinds, for ``medpipe run``, the
    server and the workflow engines alike)."""
    global _plugins_loaded
    import medpipe.pipeline.stages  # noqa: F401  (registers the built-in kinds)

    if _plugins_loaded:
        return
    _plugins_loaded = True
    import importlib
    import os

    for name in filter(None, (m.strip() for m in os.environ.get(STAGE_MODULES_ENV, "").split(","))):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise PipelineError(f"${STAGE_MODULES_ENV} names {name!r}, which cannot be imported ({exc})") from None


def get_stage(kind: str) -> type[Stage]:
    _ensure_builtin()
    try:
        return _REGISTRY[kind]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise PipelineError(f"unknown stage kind {kind!r}; known kinds: {known}") from None


def list_stages(pattern: str = "*") -> list[str]:
    _ensure_builtin()
    return sorted(k for k in _REGISTRY if fnmatch.fnmatch(k, pattern))
