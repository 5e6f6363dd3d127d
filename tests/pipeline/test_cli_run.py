"""``medpipe run`` / ``medpipe pipelines`` end to end: worker processes, crashes, resume, summary."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import BASIC_PIPELINE, make_volume, snapshot, write_nifti
from pipeline_test_stages import CRASH_MARKER_ENV

from medpipe.cli import main


def _text(capsys: pytest.CaptureFixture) -> tuple[str, str]:
    out, err = capsys.readouterr()
    return re.sub(r"\s+", " ", out), re.sub(r"\s+", " ", err)


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


@pytest.fixture
def batch(tmp_path: Path) -> Path:
    root = tmp_path / "batch"
    write_nifti(root / "good_1.nii.gz", make_volume(1))
    write_nifti(root / "empty_2.nii.gz", make_volume(2, zero=True))
    write_nifti(root / "good_3" / "image.nii.gz", make_volume(3))
    (root / "README.txt").write_text("not a study")
    return root


def test_parallel_batch_with_one_bad_study(basic_pipeline: Path, batch: Path, tmp_path: Path, capsys) -> None:
    before = snapshot(batch)
    out = tmp_path / "out"
    rc = main(["run", str(basic_pipeline), str(batch), "-o", str(out), "--jobs", "2"])
    stdout, _ = _text(capsys)
    assert rc == 1
    assert "failed empty_2 at stage seg: unexpected error (ValueError: image is all zeros)" in stdout
    assert "2/3 studies done" in stdout
    for good in ("good_1", "good_3"):
        rec = _record(out / good)
        assert rec["status"] == "done" and (out / good / "artifacts/count/table.json").is_file()
    bad = _record(out / "empty_2")
    assert bad["stages"]["seg"]["status"] == "failed" and bad["stages"]["count"]["status"] == "skipped"
    assert "Traceback" in (out / "empty_2/logs/seg.log").read_text()
    assert snapshot(batch) == before
    assert sorted(p.name for p in out.iterdir()) == ["empty_2", "good_1", "good_3"]

    # second run: everything that succeeded is cached, the bad study fails the same way
    rc = main(["run", str(basic_pipeline), str(batch), "-o", str(out), "-j", "2"])
    assert rc == 1
    assert all(s["status"] == "cached" for s in _record(out / "good_1")["stages"].values())


def test_killed_worker_is_one_failed_study_and_the_run_resumes(tmp_path: Path, capsys, monkeypatch) -> None:
    pipeline = tmp_path / "crashy.yaml"
    pipeline.write_text(BASIC_PIPELINE.replace(
        "    inputs: {image: scale.image}\n  scale:",
        "    inputs: {image: crash.image}\n  crash:\n    kind: t_crash_on_marker\n"
        "    inputs: {image: scale.image}\n  scale:",
    ))
    studies = tmp_path / "studies"
    write_nifti(studies / "case_1.nii.gz", make_volume(1))
    out = tmp_path / "out"
    marker = tmp_path / "crash-now"
    marker.write_text("")
    monkeypatch.setenv(CRASH_MARKER_ENV, str(marker))

    rc = main(["run", str(pipeline), str(studies / "case_1.nii.gz"), "-o", str(out)])
    stdout, _ = _text(capsys)
    assert rc == 1
    assert "failed case_1 at stage crash: worker process died with exit code 1" in stdout
    run_dir = out / "case_1"
    rec = _record(run_dir)
    assert rec["status"] == "failed"
    assert [rec["stages"][s]["status"] for s in ("load", "scale", "crash", "seg", "count")] == [
        "done", "done", "failed", "skipped", "skipped"]
    assert not (run_dir / "artifacts/crash").exists() and not list((run_dir / "artifacts").glob(".*"))
    done_before = {s: (run_dir / "artifacts" / s / "_record.json").stat().st_mtime_ns for s in ("load", "scale")}

    marker.unlink()
    rc = main(["run", str(pipeline), str(studies / "case_1.nii.gz"), "-o", str(out)])
    assert rc == 0
    rec = _record(run_dir)
    assert [rec["stages"][s]["status"] for s in ("load", "scale", "crash", "seg", "count")] == [
        "cached", "cached", "done", "done", "done"]
    assert {s: (run_dir / "artifacts" / s / "_record.json").stat().st_mtime_ns for s in ("load", "scale")} == done_before


def test_set_override_reruns_downstream_only(basic_pipeline: Path, nifti_study: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["run", str(basic_pipeline), str(nifti_study), "-o", str(out)]) == 0
    assert main(["run", str(basic_pipeline), str(nifti_study), "-o", str(out), "--set", "seg.threshold=60"]) == 0
    stages = _record(out / "case_a")["stages"]
    assert {s: e["status"] for s, e in stages.items()} == {
        "load": "cached", "scale": "cached", "seg": "done", "count": "done"}
    capsys.readouterr()
    rc = main(["run", str(basic_pipeline), str(nifti_study), "-o", str(out), "--set", "seg.threshold=lots"])
    _, stderr = _text(capsys)
    assert rc == 2 and "error:" in stderr and "stage 'seg'" in stderr and "param 'threshold'" in stderr


def test_dry_run_prints_the_dag_and_runs_nothing(basic_pipeline: Path, batch: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    rc = main(["run", str(basic_pipeline), str(batch), "-o", str(out), "--dry-run", "--set", "scale.factor=3"])
    stdout, _ = _text(capsys)
    assert rc == 0 and not out.exists()
    order = [stdout.index(f". {s} [") for s in ("load", "scale", "seg", "count")]
    assert order == sorted(order)
    assert '"factor": 3.0' in stdout and "studies (3)" in stdout and "good_3" in stdout


def test_invalid_pipeline_file_exits_2_naming_file_and_stage(tmp_path: Path, nifti_study: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASIC_PIPELINE.replace("kind: t_scale", "kind: t_scael"))
    rc = main(["run", str(bad), str(nifti_study), "-o", str(tmp_path / "out")])
    _, stderr = _text(capsys)
    assert rc == 2 and str(bad) in stderr and "stage 'scale'" in stderr and "unknown kind 't_scael'" in stderr
    assert not (tmp_path / "out").exists()


def test_pipelines_lists_shipped_names(tmp_path: Path, monkeypatch, capsys) -> None:
    d = tmp_path / "shipped"
    d.mkdir()
    (d / "tiny-basic.yaml").write_text(BASIC_PIPELINE)
    monkeypatch.setenv("MEDPIPE_PIPELINES", str(d))
    assert main(["pipelines"]) == 0
    stdout, _ = _text(capsys)
    assert "tiny-basic" in stdout and "load, scale, threshold and count" in stdout
