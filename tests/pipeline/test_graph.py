"""The DAG: order, sub-graphs, description."""

from __future__ import annotations

from pathlib import Path

import pytest

from medpipe.errors import PipelineError
from medpipe.pipeline.graph import PipelineGraph, topological_order
from medpipe.pipeline.spec import load_pipeline

BRANCHED = """\
name: branched
description: two branches from one load
stages:
  load: {kind: t_load_nifti, inputs: {study: input.study}}
  big: {kind: t_scale, params: {factor: 10}, inputs: {image: load.image}}
  small: {kind: t_scale, params: {factor: 0.1}, inputs: {image: load.image}}
  seg_big: {kind: t_threshold_segment, params: {threshold: 5}, inputs: {image: big.image}}
  count_big: {kind: t_count, inputs: {labels: seg_big.labels}}
  seg_small: {kind: t_threshold_segment, params: {threshold: 5}, inputs: {image: small.image}}
"""


@pytest.fixture
def branched(tmp_path: Path):
    p = tmp_path / "branched.yaml"
    p.write_text(BRANCHED)
    return load_pipeline(p)


def test_order_respects_dependencies_and_file_order(basic_pipeline: Path, branched) -> None:
    assert PipelineGraph(load_pipeline(basic_pipeline)).order == ["load", "scale", "seg", "count"]
    order = PipelineGraph(branched).order
    for stage, deps in PipelineGraph(branched).deps.items():
        assert all(order.index(d) < order.index(stage) for d in deps)
    assert order == ["load", "big", "small", "seg_big", "seg_small", "count_big"]


def test_subgraph_runs_only_what_a_target_needs(branched) -> None:
    g = PipelineGraph(branched)
    assert g.subgraph(["seg_small.labels"]).order == ["load", "small", "seg_small"]
    assert g.subgraph(["count_big"]).order == ["load", "big", "seg_big", "count_big"]
    assert set(g.subgraph(["big", "small"]).order) == {"load", "big", "small"}
    with pytest.raises(PipelineError, match="target 'nope' names no stage"):
        g.subgraph(["nope"])
    with pytest.raises(PipelineError, match="stage 'big' has no output 'labels'"):
        g.subgraph(["big.labels"])


def test_upstream_downstream(branched) -> None:
    g = PipelineGraph(branched)
    assert g.upstream("count_big") == {"load", "big", "seg_big"}
    assert g.downstream("big") == {"seg_big", "count_big"}
    assert g.downstream("load") == set(g.order) - {"load"}


def test_describe_lists_stages_in_order_with_kind_inputs_params(branched) -> None:
    text = PipelineGraph(branched).subgraph(["seg_small"]).describe()
    lines = text.splitlines()
    assert lines[0] == "pipeline branched: two branches from one load"
    idx = [next(i for i, ln in enumerate(lines) if f". {s}  [" in ln) for s in ("load", "small", "seg_small")]
    assert idx == sorted(idx)
    assert "small  [t_scale]" in text and "image <- load.image" in text
    assert '"factor": 0.1' in text and '"threshold": 5.0' in text
    assert "big" not in text.replace("branched", "")


def test_topological_order_names_cycle() -> None:
    with pytest.raises(PipelineError, match=r"cycle: (x -> y -> x|y -> x -> y)"):
        topological_order({"x": {"y"}, "y": {"x"}, "z": set()})
    assert topological_order({"b": {"a"}, "a": set()}) == ["a", "b"]
