"""What a workflow engine needs to schedule a pipeline: its stages, their order and resources.

``engine_plan(spec, studies_dir)`` turns a validated pipeline and a folder of studies into
plain data (``medpipe plan --json`` prints it): the stages the pipeline's outputs need, in
order, each with the stages it waits for, its resources (threads, memory, GPU), and the
folder it publishes per study; and the studies, discovered exactly as ``medpipe run``
discovers them. The Snakefile and the Airflow DAG factory read nothing else, so they
depend on the graph alone and run in their own environments (Snakemake and Airflow pin
libraries the project cannot share); every job they start is one ``medpipe stage`` call.

A pipeline an engine cannot schedule is refused here, before any job starts: every
artifact crossing a stage boundary must have a file form, because each stage runs in
its own process (possibly on another node), and each stage kind must be importable by
that process (not defined in a ``__main__`` script).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medpipe.errors import PipelineError
from medpipe.pipeline.graph import INPUT_STAGE, PipelineGraph, split_ref
from medpipe.pipeline.spec import PipelineSpec

__all__ = ["PLAN_SCHEMA", "engine_plan", "check_schedulable", "job_name"]

PLAN_SCHEMA = 1
_JOB_NAME = re.compile(r"[^A-Za-z0-9_]")


def job_name(stage: str) -> str:
    """A stage name as an engine job name (Snakemake rule names are Python identifiers)."""
    name = _JOB_NAME.sub("_", stage)
    return name if not name[0].isdigit() else f"s_{name}"


def check_schedulable(spec: PipelineSpec, graph: PipelineGraph) -> None:
    """Refuse, naming the stage, what an engine running one stage per process cannot run."""
    names: dict[str, str] = {}
    for name in graph.order:
        cls = spec.stage_class(name)
        where = f"{spec.source}: stage {name!r} ({cls.kind}) cannot run under a workflow engine"
        if cls.__module__ == "__main__":
            raise PipelineError(f"{where}: its kind is defined in the __main__ script, which the engine's "
                                "medpipe stage processes cannot import; move it to a module and name it in "
                                "MEDPIPE_STAGE_MODULES")
        for port, typ in [*cls.outputs.items(), *cls.inputs.items()]:
            if not typ.has_file_form():
                raise PipelineError(f"{where}: its port {port!r} carries a {typ.name!r} artifact, which has no "
                                    "file form (each stage runs in its own process there; give "
                                    f"{typ.__name__} save/load)")
        job = job_name(name)
        if job in names:
            raise PipelineError(f"{spec.source}: stages {names[job]!r} and {name!r} would both be engine job "
                                f"{job!r}; rename one")
        names[job] = name


def engine_plan(
    spec: PipelineSpec,
    studies_dir: str | Path | None = None,
    *,
    targets: Sequence[str] | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """The plan both engines schedule (JSON-ready). ``studies_dir`` is discovered like the
    INPUT of ``medpipe run``; None leaves ``studies`` empty (a DAG whose studies are listed
    at run time)."""
    from medpipe.pipeline.discover import discover_studies

    graph = PipelineGraph(spec)
    want = list(targets or spec.outputs)
    if want:
        graph = graph.subgraph(want)
    check_schedulable(spec, graph)
    results = [r for r in spec.result_refs() if split_ref(r)[0] in graph]
    result_stages = sorted({split_ref(r)[0] for r in results}, key=graph.order.index)
    leaves = [n for n in graph.order if not graph.downstream(n)]
    stages = []
    for name in graph.order:
        res = spec.stage_resources(name)
        st = spec.stages[name]
        stages.append({
            "name": name,
            "job": job_name(name),
            "kind": st.kind,
            "needs": [n for n in graph.order if n in graph.deps[name]],
            "reads_study": f"{INPUT_STAGE}.study" in st.inputs.values(),
            "resources": {"threads": res.threads, "mem_mb": res.mem_mb,
                          "gpu": 1 if res.gpu and device.startswith("cuda") else 0},
            "publishes": f"artifacts/{name}",
        })
    studies = [] if studies_dir is None else discover_studies(studies_dir)
    return {
        "schema": PLAN_SCHEMA,
        "pipeline": {"name": spec.name, "file": str(Path(spec.source).resolve()), "file_hash": spec.file_hash,
                     "overrides": spec.overrides, "targets": want},
        "device": device,
        "stages": stages,
        "final": sorted(set(result_stages) | set(leaves), key=graph.order.index),
        "results": results,
        "studies": [{"name": n, "path": str(Path(p).resolve())} for n, p in studies],
    }
