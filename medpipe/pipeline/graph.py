"""The DAG of a validated pipeline: dependencies, execution order, sub-graphs, a description.

This module is the one home of "who reads from whom": the spec (validated data) asks it
for the order when it checks a file for cycles, the runner and the workflow engines
(``pipeline.plan``) ask it what to run and in which order. It needs nothing of the spec
but its ``stages`` mapping (``inputs`` of each stage), so it imports no other pipeline
module at run time.

``graphlib.TopologicalSorter`` does the ordering and cycle detection; we add what it
does not: a deterministic order (ties broken by the order stages appear in the file),
the cycle named as ``a -> b -> a``, and ``subgraph(targets)`` so asking for one output
runs only the stages it depends on.
"""

from __future__ import annotations

import graphlib
import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from medpipe.errors import PipelineError

if TYPE_CHECKING:
    from medpipe.pipeline.spec import PipelineSpec

__all__ = ["INPUT_STAGE", "PipelineGraph", "split_ref", "stage_dependencies", "topological_order"]

# The pseudo-stage whose outputs the runner provides (``input.study``).
INPUT_STAGE = "input"


def split_ref(ref: str) -> tuple[str, str]:
    """``"seg.labels"`` -> ("seg", "labels"); ``"seg"`` -> ("seg", "")."""
    stage, _, out = ref.partition(".")
    return stage, out


def stage_dependencies(stages: Mapping[str, Any]) -> dict[str, set[str]]:
    """stage -> the stages it reads from (the ``input`` pseudo-stage left out), for a
    mapping of stage name -> anything with an ``inputs`` mapping of port -> ``stage.output``."""
    return {
        name: {split_ref(ref)[0] for ref in st.inputs.values()} - {INPUT_STAGE}
        for name, st in stages.items()
    }


def topological_order(deps: dict[str, set[str]]) -> list[str]:
    """Stages in an order where every stage comes after the stages it reads from."""
    rank = {name: i for i, name in enumerate(deps)}
    sorter = graphlib.TopologicalSorter(deps)
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        cycle = exc.args[1] if len(exc.args) > 1 else []
        # graphlib lists the cycle in data-flow order, first node repeated at the end.
        shown = " -> ".join(str(c) for c in cycle)
        raise PipelineError(f"the stages form a cycle: {shown}") from None
    order: list[str] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=lambda n: rank.get(n, len(rank)))
        order.extend(ready)
        sorter.done(*ready)
    return order


class PipelineGraph:
    """The stages of ``spec`` (or the part of it ``subgraph`` kept) in execution order."""

    def __init__(self, spec: PipelineSpec, stages: Iterable[str] | None = None) -> None:
        self.spec = spec
        all_deps = stage_dependencies(spec.stages)
        keep = set(all_deps if stages is None else stages)
        self.deps: dict[str, set[str]] = {n: all_deps[n] & keep for n in all_deps if n in keep}
        self.order: list[str] = topological_order(self.deps)

    def __contains__(self, stage: str) -> bool:
        return stage in self.deps

    def __len__(self) -> int:
        return len(self.order)

    def upstream(self, stage: str) -> set[str]:
        """Every stage ``stage`` depends on, directly or not."""
        seen: set[str] = set()
        todo = list(self.deps[stage])
        while todo:
            s = todo.pop()
            if s not in seen:
                seen.add(s)
                todo.extend(self.deps[s])
        return seen

    def downstream(self, stage: str) -> set[str]:
        """Every stage that depends on ``stage``, directly or not."""
        return {s for s in self.deps if stage in self.upstream(s)}

    def subgraph(self, targets: Iterable[str]) -> PipelineGraph:
        """Only what ``targets`` (``"stage"`` or ``"stage.output"``) need."""
        keep: set[str] = set()
        for t in targets:
            stage, _, out = t.partition(".")
            if stage not in self.deps:
                raise PipelineError(
                    f"{self.spec.source}: target {t!r} names no stage (stages: {', '.join(self.order)})"
                )
            if out and out not in self.spec.stage_class(stage).outputs:
                outs = ", ".join(self.spec.stage_class(stage).outputs)
                raise PipelineError(f"{self.spec.source}: target {t!r}: stage {stage!r} has no output {out!r} (outputs: {outs})")
            keep |= {stage} | self.upstream(stage)
        return PipelineGraph(self.spec, keep)

    def describe(self) -> str:
        """The stages in run order with kind, inputs and resolved params (for --dry-run)."""
        spec = self.spec
        lines = [f"pipeline {spec.name}: {spec.description}", f"  file: {spec.source}"]
        if spec.overrides:
            lines.append(f"  overrides: {' '.join(spec.overrides)}")
        for i, name in enumerate(self.order, 1):
            st = spec.stages[name]
            lines.append(f"  {i}. {name}  [{st.kind}]")
            for port, ref in st.inputs.items():
                lines.append(f"       {port} <- {ref}")
            params = spec.resolved_params(name)
            if params:
                lines.append(f"       params: {json.dumps(params, sort_keys=True)}")
            outs = spec.stage_class(name).outputs
            if outs:
                lines.append("       outputs: " + ", ".join(f"{o} ({t.name})" for o, t in outs.items()))
        return "\n".join(lines)
