"""``medpipe stage`` and ``medpipe plan``: the engine interface, through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import BASIC_PIPELINE, make_volume, write_nifti

from medpipe.cli import main
from medpipe.errors import PipelineError
from medpipe.pipeline import load_pipeline, parse_pipeline, run_pipeline
from medpipe.pipeline.plan import engine_plan, job_name
from medpipe.pipeline.provenance import published_hashes


def test_stage_by_stage_gives_the_run_folder_of_medpipe_run(tmp_path: Path, basic_pipeline: Path,
                                                             nifti_study: Path, capsys) -> None:
    run_dir = tmp_path / "staged" / "case_a"
    for stage in ("load", "scale", "seg", "count"):
        assert main(["stage", str(basic_pipeline), stage, "--study", str(nifti_study), "--run-dir", str(run_dir),
                     "--threads", "1"]) == 0
    assert "stage count of study case_a: done" in capsys.readouterr().out
    assert main(["stage", str(basic_pipeline), "seg", "--run-dir", str(run_dir)]) == 0
    assert "stage seg of study case_a: cached" in capsys.readouterr().out
    ref = run_pipeline(basic_pipeline, nifti_study, tmp_path / "whole")
    assert published_hashes(run_dir) == published_hashes(ref.run_dir)
    staged, whole = (json.loads((d / "run.json").read_text()) for d in (run_dir, ref.run_dir))
    assert staged["status"] == whole["status"] == "done"
    assert staged["outputs"] == whole["outputs"] and staged["params"] == whole["params"]
    assert {k: v["key"] for k, v in staged["stages"].items()} == {k: v["key"] for k, v in whole["stages"].items()}


def test_a_failing_stage_names_study_and_stage_and_publishes_nothing(tmp_path: Path, basic_pipeline: Path,
                                                                      capsys) -> None:
    study = write_nifti(tmp_path / "empty_1.nii.gz", make_volume(1, zero=True))
    run_dir = tmp_path / "out" / "empty_1"
    for stage in ("load", "scale"):
        assert main(["stage", str(basic_pipeline), stage, "--study", str(study), "--run-dir", str(run_dir)]) == 0
    assert main(["stage", str(basic_pipeline), "seg", "--study", str(study), "--run-dir", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert "error: stage 'seg' failed on study 'empty_1': unexpected error (ValueError: image is all zeros)" in err
    assert not (run_dir / "artifacts" / "seg").exists() and not list((run_dir / "artifacts").glob(".*tmp*"))
    rec = json.loads((run_dir / "run.json").read_text())
    assert rec["status"] == "failed" and rec["error"]["stage"] == "seg"
    # downstream of a failed stage: refused with the missing stage named, exit 2
    assert main(["stage", str(basic_pipeline), "count", "--run-dir", str(run_dir)]) == 2
    assert "needs the outputs of stage 'seg', which has not completed" in capsys.readouterr().err


def test_a_study_the_run_folder_does_not_belong_to_is_refused(tmp_path: Path, basic_pipeline: Path,
                                                             nifti_study: Path) -> None:
    other = write_nifti(tmp_path / "other.nii.gz", make_volume(5))
    run_dir = tmp_path / "out" / "case_a"
    assert main(["stage", str(basic_pipeline), "load", "--study", str(nifti_study), "--run-dir", str(run_dir)]) == 0
    with pytest.raises(PipelineError, match="holds the run of study .*case_a.nii.gz, not .*other.nii.gz"):
        from medpipe.pipeline import run_stage

        run_stage(load_pipeline(basic_pipeline), "scale", run_dir, study_path=other)


def test_plan_lists_stages_in_order_with_resources_and_the_studies(tmp_path: Path, basic_pipeline: Path,
                                                                   capsys) -> None:
    for i in range(2):
        write_nifti(tmp_path / "batch" / f"case_{i}.nii.gz", make_volume(i))
    text = basic_pipeline.read_text().replace("params: {factor: 2.0}", "params: {factor: 2.0}\n    resources: {threads: 3, mem_mb: 1234}")
    basic_pipeline.write_text(text)
    assert main(["plan", str(basic_pipeline), "--studies", str(tmp_path / "batch"), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in plan["stages"]] == ["load", "scale", "seg", "count"]
    by = {s["name"]: s for s in plan["stages"]}
    assert by["count"]["needs"] == ["scale", "seg"] and by["load"]["reads_study"] and not by["seg"]["reads_study"]
    assert by["scale"]["resources"] == {"threads": 3, "mem_mb": 1234, "gpu": 0}
    assert by["load"]["resources"] == {"threads": 1, "mem_mb": 1000, "gpu": 0}  # the kind's declaration
    assert [s["name"] for s in plan["studies"]] == ["case_0", "case_1"] and plan["final"] == ["count"]


def test_shipped_kinds_declare_resources_and_gpu_is_asked_only_on_cuda() -> None:
    spec = load_pipeline("ct_organs")
    seg = {s["name"]: s for s in engine_plan(spec, device="cuda")["stages"]}["segment"]
    assert seg["resources"] == {"threads": 4, "mem_mb": 8000, "gpu": 1}
    assert {s["name"]: s for s in engine_plan(spec)["stages"]}["segment"]["resources"]["gpu"] == 0
    over = load_pipeline("ct_organs").model_dump()  # a pipeline file may override per stage
    over["stages"]["segment"]["resources"] = {"mem_mb": 16000}
    assert parse_pipeline(over).stage_resources("segment").model_dump() == {"threads": 4, "mem_mb": 16000, "gpu": True}


def test_bad_resources_and_unschedulable_stages_are_one_sentence(tmp_path: Path) -> None:
    bad = BASIC_PIPELINE.replace("params: {factor: 2.0}", "params: {factor: 2.0}\n    resources: {cores: 2}")
    with pytest.raises(PipelineError, match=r"stage 'scale': resources: unknown field 'cores' \(known: threads, mem_mb, gpu\)"):
        parse_pipeline(bad)
    neg = BASIC_PIPELINE.replace("params: {factor: 2.0}", "params: {factor: 2.0}\n    resources: {threads: 0}")
    with pytest.raises(PipelineError, match="stage 'scale': resources: 'threads'"):
        parse_pipeline(neg)
    blob = parse_pipeline(BASIC_PIPELINE + "  blob:\n    kind: t_memory_only\n    inputs: {image: load.image}\n")
    with pytest.raises(PipelineError, match=r"stage 'blob' \(t_memory_only\) cannot run under a workflow engine: "
                                            r"its port 'blob' carries a 'in_memory' artifact, which has no file form"):
        engine_plan(blob)
    assert job_name("seg-v2") == "seg_v2" and job_name("2nd") == "s_2nd"


def test_published_hashes_ignore_dicom_instance_identity_but_not_content(tmp_path: Path) -> None:
    import shutil

    import pydicom
    from pydicom.data import get_testdata_file

    src = Path(get_testdata_file("CT_small.dcm"))
    runs = []
    for name, change in (("a", None), ("b", "uid"), ("c", "pixel")):
        f = tmp_path / name / "artifacts" / "write" / "files.files" / "seg.dcm"
        f.parent.mkdir(parents=True)
        shutil.copy(src, f)
        if change:
            ds = pydicom.dcmread(f)
            if change == "uid":  # written again: new UIDs, new time
                ds.SOPInstanceUID, ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4", "1.2.3.4"
                ds.InstanceCreationTime = "235959"
            else:
                arr = ds.pixel_array.copy()
                arr[0, 0] += 1
                ds.PixelData = arr.tobytes()
            ds.save_as(f)
        runs.append(published_hashes(tmp_path / name))
    assert runs[0] == runs[1] and runs[0] != runs[2]
