"""Checks that run before any stage of a study: fail in seconds, not after the compute.

Every stage kind may declare ``preflight(params, ctx)``; the runner calls them in graph
order on a :class:`StudyProbe` — what can be learnt about the study cheaply (is it DICOM or
a volume file, which series a selector picks, from the headers only) — before the first
stage runs. A probe is shared by the stages of one study, so the header scan happens once;
a stage that consumes another's output finds what that stage learnt under its name
(``ctx.learned(port)``). A refusal is a ``MedpipeError`` naming the study and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from medpipe.errors import MedpipeError, PipelineError

__all__ = ["StudyProbe", "PreflightContext", "run_preflight"]


@dataclass
class StudyProbe:
    """Cheap facts about one study; ``learned`` holds what each stage's preflight found."""

    path: Path
    learned: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """``volume`` for a NIfTI/NRRD/MHA file, else ``dicom`` (a folder, zip or DICOMDIR)."""
        from medpipe.io.dicom import is_volume_file

        return "volume" if is_volume_file(self.path) else "dicom"

    @cached_property
    def scan(self) -> Any:
        """The DICOM header scan (headers only; pixels are read by the stages)."""
        from medpipe.io.dicom import scan_study

        return scan_study(self.path)


@dataclass
class PreflightContext:
    stage: str
    study: str
    probe: StudyProbe
    inputs: dict[str, str]  # port -> "stage.output"

    def learned(self, port: str) -> Any:
        """What the preflight of the stage feeding ``port`` learnt (None if nothing)."""
        ref = self.inputs.get(port)
        return self.probe.learned.get(ref.split(".", 1)[0]) if ref else None


def run_preflight(spec: Any, order: list[str], study: str, study_path: Path) -> tuple[str, str] | None:
    """``(stage, message)`` of the first refusal, or None when every check passes."""
    probe = StudyProbe(Path(study_path))
    for name in order:
        cls = spec.stage_class(name)
        ctx = PreflightContext(name, study, probe, dict(spec.stages[name].inputs))
        try:
            found = cls.preflight(cls.Params(**spec.resolved_params(name)), ctx)
        except MedpipeError as exc:
            return name, str(exc)
        except Exception as exc:  # a check must never crash the run; name the problem instead
            return name, PipelineError(f"the pre-run check failed ({type(exc).__name__}: {exc})").args[0]
        if found is not None:
            probe.learned[name] = found
    return None
