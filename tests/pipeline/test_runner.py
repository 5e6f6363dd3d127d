"""The runner, in process: real runs on small NIfTI studies, caching, failures, provenance."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import BASIC_PIPELINE, make_volume, snapshot, write_nifti

from medpipe.errors import PipelineError
from medpipe.pipeline import load_pipeline, run_pipeline, run_stage
from medpipe.pipeline.cache import hash_study


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def _no_temps(run_dir: Path) -> bool:
    return not list((run_dir / "artifacts").glob(".*"))


def test_end_to_end_values_and_provenance(basic_pipeline: Path, nifti_study: Path, tmp_path: Path) -> None:
    before = snapshot(nifti_study.parent)
    res = run_pipeline(basic_pipeline, nifti_study, tmp_path / "out")
    assert res.ok and res.stages == {s: "done" for s in ("load", "scale", "seg", "count")}
    run_dir = tmp_path / "out" / "case_a"
    assert res.run_dir == run_dir and res.study == "case_a"

    vol = make_volume(1)
    labels = nib.load(str(run_dir / "artifacts/seg/labels.nii.gz"))
    expected = (vol * 2.0 > 50).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(labels.dataobj), expected)
    np.testing.assert_allclose(labels.affine, np.diag([1.5, 1.0, 2.0, 1.0]))
    table = json.loads((run_dir / "artifacts/count/table.json").read_text())
    assert table["voxels"] == int(expected.sum())
    assert table["mean_inside"] == pytest.approx(float((vol * 2.0)[expected > 0].mean()), rel=1e-5)

    rec = _record(run_dir)
    assert rec["status"] == "done" and rec["error"] is None
    assert rec["pipeline"]["name"] == "basic" and len(rec["pipeline"]["file_hash"]) == 32
    assert rec["params"]["seg"] == {"kind": "t_threshold_segment", "params": {"threshold": 50.0},
                                    "inputs": {"image": "scale.image"}}
    assert rec["study"]["hash"] == hash_study(nifti_study)
    assert rec["study"]["path"] == str(nifti_study.resolve())
    assert {"medpipe", "python", "numpy", "torch", "monai"} <= set(rec["versions"])
    seg = rec["stages"]["seg"]
    assert seg["status"] == "done" and seg["facts"] == {"foreground_voxels": int(expected.sum())}
    assert seg["peak_rss_mb"] > 10 and seg["duration_s"] >= 0 and seg["started"] <= seg["finished"]
    assert rec["outputs"] == {"count.table": ["artifacts/count/table.json"]}
    assert _no_temps(run_dir) and not (run_dir / "artifacts/seg/work").exists()
    assert snapshot(nifti_study.parent) == before


def test_second_run_is_fully_cached_and_touches_nothing(basic_pipeline: Path, nifti_study: Path, tmp_path: Path) -> None:
    run_pipeline(basic_pipeline, nifti_study, tmp_path / "out")
    arts = snapshot(tmp_path / "out/case_a/artifacts")
    res = run_pipeline(basic_pipeline, nifti_study, tmp_path / "out")
    assert res.stages == {s: "cached" for s in ("load", "scale", "seg", "count")}
    assert res.n_cached == 4 and res.n_run == 0
    assert snapshot(tmp_path / "out/case_a/artifacts") == arts
    forced = run_pipeline(basic_pipeline, nifti_study, tmp_path / "out", force=True)
    assert forced.n_run == 4


def test_param_change_reruns_only_that_stage_and_downstream(basic_pipeline: Path, nifti_study: Path, tmp_path: Path) -> None:
    run_pipeline(basic_pipeline, nifti_study, tmp_path / "out")
    res = run_pipeline(basic_pipeline, nifti_study, tmp_path / "out", overrides=["seg.threshold=70"])
    assert res.stages == {"load": "cached", "scale": "cached", "seg": "done", "count": "done"}
    table = json.loads((tmp_path / "out/case_a/artifacts/count/table.json").read_text())
    assert table["voxels"] == int((make_volume(1) * 2.0 > 70).sum())
    assert _record(tmp_path / "out/case_a")["pipeline"]["overrides"] == ["seg.threshold=70"]


def test_identical_upstream_bytes_keep_downstream_cached(basic_pipeline: Path, nifti_study: Path, tmp_path: Path) -> None:
    run_pipeline(basic_pipeline, nifti_study, tmp_path / "out")
    res = run_pipeline(basic_pipeline, nifti_study, tmp_path / "out", overrides=["scale.note=changed"])
    # scale re-ran (new params) but wrote the same bytes, so its consumers stay cached
    assert res.stages == {"load": "cached", "scale": "done", "seg": "cached", "count": "cached"}


def test_changed_input_or_corrupted_artifact_reruns(basic_pipeline: Path, nifti_study: Path, tmp_path: Path) -> None:
    run_pipeline(basic_pipeline, nifti_study, tmp_path / "out")
    seg_file = tmp_path / "out/case_a/artifacts/seg/labels.nii.gz"
    seg_file.write_bytes(seg_file.read_bytes()[:-10])  # damaged on disk
    res = run_pipeline(basic_pipeline, nifti_study, tmp_path / "out")
    assert res.stages == {"load": "cached", "scale": "cached", "seg": "done", "count": "cached"}
    write_nifti(nifti_study, make_volume(2))  # the study changed
    res = run_pipeline(basic_pipeline, nifti_study, tmp_path / "out")
    assert res.stages["load"] == "done"


def _raising_pipeline(tmp_path: Path, medpipe_error: bool) -> Path:
    text = BASIC_PIPELINE.replace(
        "    inputs: {image: scale.image}\n  scale:",
        "    inputs: {image: bad.image}\n  bad:\n    kind: t_raise\n"
        f"    params: {{message: 'no contrast phase found', medpipe_error: {str(medpipe_error).lower()}}}\n"
        "    inputs: {image: scale.image}\n  scale:",
    )
    p = tmp_path / f"raising_{medpipe_error}.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("medpipe_error", [True, False])
def test_failed_stage_is_recorded_and_downstream_skipped(tmp_path: Path, nifti_study: Path, medpipe_error: bool) -> None:
    before = snapshot(nifti_study.parent)
    res = run_pipeline(_raising_pipeline(tmp_path, medpipe_error), nifti_study, tmp_path / "out")
    run_dir = tmp_path / "out/case_a"
    assert not res.ok and res.failed_stage == "bad"
    expected = ("no contrast phase found" if medpipe_error else
                "unexpected error (RuntimeError: no contrast phase found); the traceback is in logs/bad.log")
    assert res.error == expected
    assert res.stages == {"load": "done", "scale": "done", "bad": "failed", "seg": "skipped", "count": "skipped"}
    rec = _record(run_dir)
    assert rec["status"] == "failed" and rec["error"] == {"stage": "bad", "message": expected}
    log = (run_dir / "logs/bad.log").read_text()
    assert "Traceback" in log and "no contrast phase found" in log
    assert not (run_dir / "artifacts/bad").exists() and _no_temps(run_dir)
    assert not (run_dir / "artifacts/seg").exists()
    assert snapshot(nifti_study.parent) == before


def test_study_folder_input_is_never_written(tmp_path: Path, basic_pipeline: Path) -> None:
    study = tmp_path / "studies" / "folder_case"
    write_nifti(study / "image.nii.gz", make_volume(3))
    (study / "notes.txt").write_text("keep me")
    before = snapshot(study)
    res = run_pipeline(basic_pipeline, study, tmp_path / "out")
    assert res.ok and res.study == "folder_case"
    assert snapshot(study) == before
    assert sorted(p.name for p in study.iterdir()) == ["image.nii.gz", "notes.txt"]


def test_targets_run_only_the_needed_stages(basic_pipeline: Path, nifti_study: Path, tmp_path: Path) -> None:
    res = run_pipeline(basic_pipeline, nifti_study, tmp_path / "out", targets=["scale.image"])
    assert res.stages == {"load": "done", "scale": "done"}
    assert res.outputs == {}  # count.table, the declared result, was not requested
    assert not (tmp_path / "out/case_a/artifacts/seg").exists()


def test_files_artifact_is_copied_out_of_the_workdir(tmp_path: Path, nifti_study: Path) -> None:
    p = tmp_path / "report.yaml"
    p.write_text(BASIC_PIPELINE + "  report:\n    kind: t_snapshot\n    inputs: {table: count.table}\n")
    res = run_pipeline(p, nifti_study, tmp_path / "out")
    assert res.ok
    report = tmp_path / "out/case_a/artifacts/report/files.files/report.txt"
    voxels = json.loads((tmp_path / "out/case_a/artifacts/count/table.json").read_text())["voxels"]
    assert report.read_text() == f"voxels={voxels}\n"
    assert res.outputs["report.files"] == ["artifacts/report/files.files"]
    assert run_pipeline(p, nifti_study, tmp_path / "out").stages["report"] == "cached"


def test_run_stage_one_at_a_time_matches_whole_run(basic_pipeline: Path, nifti_study: Path, tmp_path: Path) -> None:
    spec = load_pipeline(basic_pipeline)
    run_dir = tmp_path / "staged" / "case_a"
    with pytest.raises(PipelineError, match="needs the outputs of stage 'load'"):
        run_stage(spec, "scale", run_dir, study_path=nifti_study)
    for stage in ("load", "scale", "seg", "count"):
        entry = run_stage(spec, stage, run_dir, study_path=nifti_study if stage == "load" else None)
        assert entry["status"] == "done"
    assert run_stage(spec, "seg", run_dir)["status"] == "cached"
    rec = _record(run_dir)
    assert rec["status"] == "done" and rec["outputs"] == {"count.table": ["artifacts/count/table.json"]}
    # a whole-pipeline run on the same folder reuses every stage run_stage produced
    res = run_pipeline(spec, nifti_study, tmp_path / "staged")
    assert res.n_cached == 4
    with pytest.raises(PipelineError, match="no stage 'nope'"):
        run_stage(spec, "nope", run_dir)


def test_missing_study_is_an_input_error(basic_pipeline: Path, tmp_path: Path) -> None:
    from medpipe.errors import InputError

    with pytest.raises(InputError, match="does not exist"):
        run_pipeline(basic_pipeline, tmp_path / "nope.nii.gz", tmp_path / "out")
