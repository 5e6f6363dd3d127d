"""Pipeline-file validation: every error names the file, the stage and the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import BASIC_PIPELINE

from medpipe.errors import PipelineError
from medpipe.pipeline.spec import load_pipeline, parse_override, parse_pipeline, shipped_pipelines


def _write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _error(tmp_path: Path, text: str, overrides=()) -> str:
    p = _write(tmp_path, text)
    with pytest.raises(PipelineError) as exc:
        load_pipeline(p, overrides)
    msg = str(exc.value)
    assert str(p) in msg, msg
    return msg


def test_valid_pipeline_resolves_defaults_and_keeps_stage_order_irrelevant(basic_pipeline: Path) -> None:
    spec = load_pipeline(basic_pipeline)
    assert spec.name == "basic"
    assert set(spec.stages) == {"load", "scale", "seg", "count"}
    assert spec.resolved_params("scale") == {"factor": 2.0, "note": ""}
    assert spec.resolved_params("seg") == {"threshold": 50.0}
    assert spec.result_refs() == ["count.table"]
    assert len(spec.file_hash) == 32


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    msg = _error(tmp_path, "name: x\ndescription: y\nstages:\n  a: {kind: t_scale\n  b: [\n")
    assert "invalid YAML" in msg and "line" in msg


def test_unknown_kind_lists_known_kinds(tmp_path: Path) -> None:
    msg = _error(tmp_path, BASIC_PIPELINE.replace("kind: t_count", "kind: t_cuont"))
    assert "stage 'count'" in msg and "unknown kind 't_cuont'" in msg and "t_count" in msg


def test_unknown_param_names_stage_param_and_known(tmp_path: Path) -> None:
    msg = _error(tmp_path, BASIC_PIPELINE.replace("{factor: 2.0}", "{factr: 2.0}"))
    assert "stage 'scale'" in msg and "unknown param 'factr'" in msg and "factor" in msg


def test_missing_required_param(tmp_path: Path) -> None:
    msg = _error(tmp_path, BASIC_PIPELINE.replace("params: {threshold: 50}", "params: {}"))
    assert "stage 'seg'" in msg and "missing required param 'threshold'" in msg


def test_wrong_param_type_gives_pydantic_reason(tmp_path: Path) -> None:
    msg = _error(tmp_path, BASIC_PIPELINE.replace("{threshold: 50}", "{threshold: high}"))
    assert "stage 'seg'" in msg and "param 'threshold'" in msg and "valid number" in msg and "'high'" in msg


def test_missing_and_unknown_input_ports(tmp_path: Path) -> None:
    msg = _error(tmp_path, BASIC_PIPELINE.replace("inputs: {image: scale.image}\n", "inputs: {}\n"))
    assert "stage 'seg'" in msg and "input port 'image'" in msg and "not connected" in msg
    msg = _error(tmp_path, BASIC_PIPELINE.replace("{image: load.image}", "{image: load.image, mask: load.image}"))
    assert "stage 'scale'" in msg and "unknown input port 'mask'" in msg


def test_optional_input_may_be_left_out(tmp_path: Path) -> None:
    spec = load_pipeline(_write(tmp_path, BASIC_PIPELINE.replace("{labels: seg.labels, image: scale.image}", "{labels: seg.labels}")))
    assert spec.stages["count"].inputs == {"labels": "seg.labels"}


def test_reference_to_missing_stage_or_output(tmp_path: Path) -> None:
    msg = _error(tmp_path, BASIC_PIPELINE.replace("{image: load.image}", "{image: lod.image}"))
    assert "stage 'scale'" in msg and "stage 'lod', which does not exist" in msg
    msg = _error(tmp_path, BASIC_PIPELINE.replace("{image: load.image}", "{image: load.img}"))
    assert "stage 'scale'" in msg and "has no output 'img'" in msg and "image" in msg
    msg = _error(tmp_path, BASIC_PIPELINE.replace("{study: input.study}", "{study: input.folder}"))
    assert "stage 'load'" in msg and "no output 'folder'" in msg


def test_artifact_type_mismatch(tmp_path: Path) -> None:
    msg = _error(tmp_path, BASIC_PIPELINE.replace("{labels: seg.labels,", "{labels: scale.image,"))
    assert "stage 'count'" in msg and "input 'labels' expects labels but 'scale.image' is image" in msg


def test_label_output_may_feed_an_image_port(tmp_path: Path) -> None:
    text = BASIC_PIPELINE.replace("inputs: {image: load.image}", "inputs: {image: seg.labels}")
    text = text.replace("inputs: {image: scale.image}\n  scale", "inputs: {image: load.image}\n  scale")
    spec = load_pipeline(_write(tmp_path, text))
    assert spec.stages["scale"].inputs["image"] == "seg.labels"


def test_cycle_is_named(tmp_path: Path) -> None:
    text = """\
name: cyc
description: a cycle
stages:
  a: {kind: t_scale, inputs: {image: c.image}}
  b: {kind: t_scale, inputs: {image: a.image}}
  c: {kind: t_scale, inputs: {image: b.image}}
"""
    msg = _error(tmp_path, text)
    assert "cycle" in msg
    cycle = msg.split("cycle: ")[1].split(" -> ")
    assert cycle[0] == cycle[-1] and set(cycle) == {"a", "b", "c"}
    # consecutive names follow the data flow: a feeds b, b feeds c, c feeds a
    feeds = {("a", "b"), ("b", "c"), ("c", "a")}
    assert all(pair in feeds for pair in zip(cycle[:-1], cycle[1:], strict=True))


def test_top_level_and_stage_shape_errors(tmp_path: Path) -> None:
    msg = _error(tmp_path, "name: x\nstages: {a: {kind: t_scale, inputs: {image: a.image}}}\n")
    assert "missing required field 'description'" in msg
    msg = _error(tmp_path, BASIC_PIPELINE.replace("    kind: t_count\n", "    kind: t_count\n    parms: {}\n"))
    assert "stage 'count'" in msg and "unknown field 'parms'" in msg
    msg = _error(tmp_path, BASIC_PIPELINE.replace("  load:\n", "  input:\n").replace("load.image", "input.image"))
    assert "stage 'input'" in msg
    msg = _error(tmp_path, "- just\n- a list\n")
    assert "YAML mapping" in msg


def test_overrides_are_yaml_scalars_validated_against_params(tmp_path: Path, basic_pipeline: Path) -> None:
    spec = load_pipeline(basic_pipeline, ["seg.threshold=0.5", "scale.note=hello world"])
    assert spec.resolved_params("seg") == {"threshold": 0.5}
    assert spec.resolved_params("scale")["note"] == "hello world"
    assert spec.overrides == ["seg.threshold=0.5", "scale.note=hello world"]
    with pytest.raises(PipelineError, match=r"stage 'seg'.*param 'threshold'.*valid number"):
        load_pipeline(basic_pipeline, ["seg.threshold=abc"])
    with pytest.raises(PipelineError, match=r"stage 'seg'.*unknown param 'treshold'"):
        load_pipeline(basic_pipeline, ["seg.treshold=1"])
    with pytest.raises(PipelineError, match=r"--set segm.threshold=1: .* no stage 'segm'"):
        load_pipeline(basic_pipeline, ["segm.threshold=1"])
    with pytest.raises(PipelineError, match="expected stage.param=value"):
        load_pipeline(basic_pipeline, ["threshold=1"])
    assert parse_override("a.b.c=[1, 2]") == ("a", ["b", "c"], [1, 2])


def test_spec_payload_round_trip(basic_pipeline: Path) -> None:
    from medpipe.pipeline.spec import PipelineSpec

    spec = load_pipeline(basic_pipeline, ["seg.threshold=7"])
    again = PipelineSpec.from_payload(spec.payload())
    assert again.model_dump() == spec.model_dump()
    assert (again.file_hash, again.source, again.overrides) == (spec.file_hash, spec.source, spec.overrides)


def test_shipped_names_resolve_from_pipeline_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "shipped"
    d.mkdir()
    _write(d, BASIC_PIPELINE, "my-basic.yaml")
    monkeypatch.setenv("MEDPIPE_PIPELINES", str(d))
    assert shipped_pipelines()["my-basic"] == d / "my-basic.yaml"
    assert load_pipeline("my-basic").name == "basic"
    with pytest.raises(PipelineError, match="neither a pipeline file nor a shipped pipeline.*my-basic"):
        load_pipeline("no-such-pipeline")
    with pytest.raises(PipelineError, match="does not exist"):
        load_pipeline(tmp_path / "missing.yaml")


def test_outputs_must_name_existing_stage_outputs(tmp_path: Path) -> None:
    msg = _error(tmp_path, BASIC_PIPELINE + "outputs: [seg.mask]\n")
    assert "outputs" in msg and "no output 'mask'" in msg
    spec = load_pipeline(_write(tmp_path, BASIC_PIPELINE + "outputs: [seg, scale.image]\n"))
    assert spec.result_refs() == ["seg.labels", "scale.image"]


def test_parse_pipeline_from_dict() -> None:
    import yaml

    spec = parse_pipeline(yaml.safe_load(BASIC_PIPELINE))
    assert spec.source == "<pipeline>" and spec.stages["load"].kind == "t_load_nifti"
