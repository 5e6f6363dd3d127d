"""The registration stages through the runner (file forms between stages), the shipped
pipelines, and the CLI commands."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medpipe.cli import main
from medpipe.io.volumes import read_volume
from medpipe.pipeline.runner import run_pipeline
from medpipe.pipeline.spec import load_pipeline, parse_pipeline
from medpipe.registration.field import DisplacementField


@pytest.fixture(scope="module")
def files(brain_pair, tmp_path_factory):
    d = tmp_path_factory.mktemp("studies")
    f, fl, m, ml = brain_pair
    paths = {"fixed": d / "fixed.nii.gz", "moving": d / "moving.nii.gz", "moving_labels": d / "moving_labels.nii.gz"}
    f.save(paths["fixed"])
    m.save(paths["moving"])
    ml.save(paths["moving_labels"])
    return paths


def test_register_then_warp_labels_in_separate_stages(files, tmp_path):
    spec = parse_pipeline({
        "name": "reg", "description": "register and warp labels",
        "stages": {
            "moving": {"kind": "load_study", "inputs": {"study": "input.study"}},
            "fixed": {"kind": "load_image", "params": {"path": str(files["fixed"])}},
            "labels": {"kind": "load_image", "params": {"path": str(files["moving_labels"])}},
            "align": {"kind": "register", "params": {"method": "affine"},
                      "inputs": {"fixed": "fixed.image", "moving": "moving.image"}},
            "warp": {"kind": "warp", "inputs": {"image": "moving.image", "field": "align.field"}},
        }})
    res = run_pipeline(spec, files["moving"], tmp_path)
    assert res.ok, res.error
    art = res.run_dir / "artifacts"
    field = DisplacementField.load(art / "align" / "field.nii.gz")
    fixed = read_volume(files["fixed"])
    assert field.shape == fixed.shape and np.allclose(field.affine, fixed.affine)
    meta = json.loads((art / "align" / "field.meta.json").read_text())
    assert meta["method"] == "affine" and len(meta["affine"]) == 4
    # the warp stage, run from the field's file form, equals the register stage's own warped image
    a = read_volume(art / "warp" / "image.nii.gz").array
    b = read_volume(art / "align" / "image.nii.gz").array
    assert np.allclose(a, b, atol=1e-2 * float(np.abs(b).max()))
    again = run_pipeline(spec, files["moving"], tmp_path)
    assert again.n_cached == len(spec.stages)


def test_followup_pipeline_aligns_and_maps_the_difference(files, tmp_path):
    spec = load_pipeline("followup", ["baseline.path=" + str(files["fixed"]), "align.method=affine"])
    res = run_pipeline(spec, files["moving"], tmp_path)
    assert res.ok, res.error
    art = res.run_dir / "artifacts"
    diff = read_volume(art / "difference" / "image.nii.gz")
    assert diff.same_grid(read_volume(files["fixed"])) and np.isfinite(diff.array).all()
    assert (art / "difference" / "files.files" / "difference.png").stat().st_size > 10_000
    missing = run_pipeline(load_pipeline("followup"), files["moving"], tmp_path / "m")
    assert not missing.ok and "needs the image's path: --set baseline.path=" in missing.error


def test_atlas_labels_pipeline_with_a_tiny_atlas_bundle(files, tiny_bundle, tmp_path):
    b = str(tiny_bundle)
    spec = load_pipeline("atlas_labels", [f"propagate.atlas_bundle={b}", "write.formats=[nifti]",
                                          "propagate.refine_iterations=2"])
    res = run_pipeline(spec, files["fixed"], tmp_path)
    assert res.ok, res.error
    art = res.run_dir / "artifacts"
    labels = read_volume(art / "write" / "files.files" / "atlas_labels.nii.gz", is_label=True)
    subject = read_volume(files["fixed"])
    assert labels.same_grid(subject) and set(np.unique(labels.array)) <= {0, 1, 2, 3}
    assert labels.meta.extra["labels"][1] == "white_matter"
    stats = json.loads((art / "statistics" / "table.json").read_text())
    assert stats["structures"]["white_matter"]["volume_ml"] > 1.0
    assert (art / "preview" / "files.files" / "preview.png").is_file()


def test_cli_train_registration_and_register(files, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for k in ("fixed", "moving"):
        (folder / files[k].name).write_bytes(files[k].read_bytes())
    out = tmp_path / "b"
    assert main(["train-registration", str(folder), "-o", str(out), "--model", "voxelmorph", "--grid", "32",
                 "--crop", "32", "--epochs", "1", "--iters-per-epoch", "1"]) == 0
    assert "validation Dice" in capsys.readouterr().out
    assert (out / "weights.safetensors").is_file() and (out / "learning_curve.png").is_file()
    reg = tmp_path / "reg"
    assert main(["register", str(files["fixed"]), str(files["moving"]), "-o", str(reg), "--method", "voxelmorph",
                 "--bundle", str(out), "--labels", str(files["moving_labels"])]) == 0
    assert {p.name for p in reg.iterdir()} == {"field.nii.gz", "warped.nii.gz", "labels.nii.gz", "report.json"}
    assert main(["register", str(files["fixed"]), str(files["moving"]), "-o", str(reg), "--method", "micdir",
                 "--bundle", str(out)]) == 2
    assert "needs a micdir bundle" in capsys.readouterr().err
    assert main(["train-registration", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
