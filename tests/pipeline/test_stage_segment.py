"""The ``segment`` stage with a tiny STU-Net bundle saved through the bundle API."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medpipe.errors import BundleError
from medpipe.image import Image, ImageMeta
from medpipe.models import create_model
from medpipe.models.bundle import resolve_bundle_path, save_bundle
from medpipe.pipeline.stage import StageContext, get_stage
from medpipe.transforms import geometry_history

CFG = {
    "name": "tiny-ct",
    "architecture": "stunet_xs",
    # three 2x pools (the last two are 1x1x1) so 32^3 patches keep a 4^3 bottleneck
    "arch_config": {"in_channels": 1, "num_classes": 3,
                    "pool_op_kernel_sizes": [[2, 2, 2]] * 3 + [[1, 1, 1]] * 2},
    "modality": "CT",
    "channels": ["CT"],
    "labels": {0: {"name": "background", "color": [0, 0, 0]}, 1: {"name": "liver", "color": [220, 20, 60]},
               2: {"name": "spleen", "color": [30, 144, 255]}},
    "preprocessing": {"orientation": "RAS", "spacing": [2.0, 2.0, 2.0],
                      "normalization": {"scheme": "ct", "clip": [-200, 300], "mean": 50.0, "std": 80.0},
                      "patch_size": [32, 32, 32], "tta_axes": [0, 1, 2]},
}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bundles") / "tiny-ct"
    save_bundle(path, create_model("stunet_xs", **CFG["arch_config"]), CFG)
    return path


def ct_image(shape=(40, 36, 30), modality="CT", channels=1) -> Image:
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(channels, *shape)).astype(np.float32)
    affine = np.array([[-2.0, 0, 0, 10], [0, 0, 2.0, -5], [0, -2.5, 0, 30], [0, 0, 0, 1]])  # oblique-free LIP-ish
    return Image(arr, affine, ImageMeta(modality=modality, series_uid="1.2.3"))


def run(kind, image, workdir, **params):
    ctx = StageContext(stage="seg", workdir=workdir)
    out = get_stage(kind)(params).run({"image": image}, ctx)
    return out, ctx


def test_labels_on_the_input_grid_with_names_colors_and_facts(bundle, tmp_path):
    image = ct_image()
    out, ctx = run("segment", image, tmp_path, bundle=str(bundle), precision="fp32")
    labels = out["labels"]
    assert set(out) == {"labels"}
    assert labels.is_label and labels.same_grid(image) and labels.array.dtype == np.uint8
    assert labels.array.shape == (1, 40, 36, 30) and set(np.unique(labels.array)) <= {0, 1, 2}
    assert labels.meta.extra["labels"] == {0: "background", 1: "liver", 2: "spleen"}
    assert labels.meta.extra["colors"][1] == [220, 20, 60]
    assert labels.meta.series_uid == "1.2.3"
    facts = ctx.facts["segment"]
    assert facts["bundle"] == "tiny-ct" and facts["precision"] == "fp32" and facts["patch_size"] == [32, 32, 32]
    assert facts["tiles"] == 2 * 2 * 1 and facts["peak_memory_bound_bytes"] > 0


def test_geometry_history_survives_so_restore_geometry_inverts_it(bundle, tmp_path):
    original = ct_image((30, 26, 20))
    ctx = StageContext(stage="pre", workdir=tmp_path)
    pre = get_stage("reorient")({"bundle": str(bundle)}).run({"image": original}, ctx)["image"]
    pre = get_stage("resample")({"bundle": str(bundle)}).run({"image": pre}, ctx)["image"]
    assert geometry_history(pre) and not pre.same_grid(original)
    out, _ = run("segment", pre, tmp_path, bundle=str(bundle), precision="fp32")
    assert out["labels"].same_grid(pre)
    assert geometry_history(out["labels"]) == geometry_history(pre)
    restored = get_stage("restore_geometry")().run({"labels": out["labels"], "reference": original}, ctx)["labels"]
    assert restored.same_grid(original)


def test_probabilities_kind_and_tta(bundle, tmp_path):
    image = ct_image((32, 32, 40))
    out, ctx = run("segment_probabilities", image, tmp_path, bundle=str(bundle), precision="fp32", tta=[0])
    probs = out["probabilities"]
    assert probs.array.shape == (3, 32, 32, 40) and probs.same_grid(image)
    np.testing.assert_allclose(probs.array.sum(0), 1.0, atol=2e-3)
    top2 = np.sort(probs.array, 0)[-2:]
    clear = (top2[1] - top2[0]) > 2e-3  # probabilities are stored via fp16: ignore near-ties
    assert clear.mean() > 0.9
    assert np.array_equal(probs.array.argmax(0)[clear], out["labels"].array[0][clear])
    assert ctx.facts["segment"]["tta_passes"] == 2
    assert probs.meta.extra["channels"] == ["background", "liver", "spleen"]


def test_modality_mismatch_names_bundle_and_study(bundle, tmp_path):
    with pytest.raises(BundleError, match="bundle tiny-ct is for CT, study is MR"):
        run("segment", ct_image(modality="MR"), tmp_path, bundle=str(bundle))


def test_channel_count_mismatch(bundle, tmp_path):
    with pytest.raises(BundleError, match="expects 1 channel"):
        run("segment", ct_image(channels=2), tmp_path, bundle=str(bundle))


def test_missing_bundle_and_bad_params(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        run("segment", ct_image(), tmp_path, bundle=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="overlap"):
        get_stage("segment")({"bundle": "x", "overlap": 1.5})


def test_relative_bundle_paths_resolve_against_the_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "here").mkdir()
    assert resolve_bundle_path("here") == tmp_path.joinpath("here").relative_to(tmp_path)
    import medpipe

    pkg = __import__("pathlib").Path(medpipe.__file__).resolve().parent
    assert resolve_bundle_path("pipeline/stages") == pkg / "pipeline" / "stages"


def test_a_changed_bundle_reruns_the_stages_that_use_it(bundle, tmp_path):
    """The cache key holds the bundle's content, not only its path: a retrained or
    re-quantised bundle in the same folder must not reuse the old labels."""
    import shutil

    from medpipe.io.volumes import write_volume
    from medpipe.pipeline import run_pipeline

    own = tmp_path / "bundle"
    shutil.copytree(bundle, own)
    study = tmp_path / "study.nii.gz"
    write_volume(ct_image((36, 34, 30)), study)
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(f"""
name: bundle_cache
description: bundle content in the cache key
stages:
  load: {{kind: load_study, inputs: {{study: input.study}}}}
  normalize: {{kind: normalize, params: {{bundle: {own}}}, inputs: {{image: load.image}}}}
  segment: {{kind: segment, params: {{bundle: {own}, precision: fp32}}, inputs: {{image: normalize.image}}}}
""")
    first = run_pipeline(pipeline, study, tmp_path / "out")
    assert first.stages == {"load": "done", "normalize": "done", "segment": "done"}
    assert run_pipeline(pipeline, study, tmp_path / "out").stages == {s: "cached" for s in first.stages}
    cfg = (own / "model.yaml").read_text()
    (own / "model.yaml").write_text(cfg.replace("name: tiny-ct", "name: tiny-ct\ndescription: retrained"))
    again = run_pipeline(pipeline, study, tmp_path / "out")
    assert again.stages == {"load": "cached", "normalize": "done", "segment": "done"}


def test_the_same_bundle_installed_elsewhere_keys_the_same(bundle, tmp_path, monkeypatch):
    """A container or another node installs the bundle at another path: the cache key holds
    its content only, so run folders made there match the host's record for record."""
    import json
    import shutil

    from medpipe.io.volumes import write_volume
    from medpipe.pipeline import run_pipeline

    study = tmp_path / "study.nii.gz"
    write_volume(ct_image((36, 34, 30)), study)
    keys = []
    for place in ("host", "container"):
        root = tmp_path / place
        shutil.copytree(bundle, root / "models" / "ct")
        pipeline = root / "p.yaml"
        pipeline.write_text("""
name: bundle_place
description: where a bundle lives is not part of the result
stages:
  load: {kind: load_study, inputs: {study: input.study}}
  segment: {kind: segment, params: {bundle: models/ct, precision: fp32}, inputs: {image: load.image}}
""")
        monkeypatch.chdir(root)  # `models/ct` resolves against the working folder
        assert run_pipeline(pipeline, study, root / "out").ok
        keys.append(json.loads((root / "out" / "study" / "artifacts" / "segment" / "_record.json").read_text())["key"])
    assert keys[0] == keys[1]
