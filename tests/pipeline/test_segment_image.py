"""``segment_image`` / ``segment_bundles`` / ``medpipe segment``: labels on the study's own grid.

The export resamples the stitched network output back before deciding (as nnU-Net's
predictor does), streamed slab by slab; it is checked here against fields whose
interpolation is exact, and end to end through the stages and the CLI with tiny bundles.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medpipe.cli import main
from medpipe.errors import BundleError
from medpipe.image import Image, ImageMeta
from medpipe.inference.grid_export import GridExport
from medpipe.io.volumes import read_volume, write_volume
from medpipe.models import create_model
from medpipe.models.bundle import load_bundle, save_bundle
from medpipe.pipeline.stage import StageContext, get_stage
from medpipe.pipeline.stages.segment_bundles import merge_label_maps


def _bundle_cfg(name: str, labels: list[str]) -> dict:
    return {
        "name": name, "architecture": "stunet_xs",
        "arch_config": {"in_channels": 1, "num_classes": len(labels) + 1,
                        "pool_op_kernel_sizes": [[2, 2, 2]] * 3 + [[1, 1, 1]] * 2},
        "modality": "CT", "channels": ["CT"],
        "labels": {0: {"name": "background"}, **{i + 1: {"name": n, "color": [40 * (i + 1), 90, 200]}
                                                  for i, n in enumerate(labels)}},
        "preprocessing": {"orientation": "RAS", "spacing": [3.0, 3.0, 3.0],
                          "normalization": {"scheme": "ct", "clip": [-200, 300], "mean": 50.0, "std": 80.0},
                          "patch_size": [32, 32, 32]},
    }


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    out = {}
    for seed, (name, labels) in enumerate([("organs", ["liver", "spleen"]), ("bones", ["vertebrae", "liver"])]):
        torch.manual_seed(seed)
        out[name] = save_bundle(root / name, create_model("stunet_xs", **_bundle_cfg(name, labels)["arch_config"]),
                                _bundle_cfg(name, labels)).path
    return out


def _ct(shape=(40, 36, 30)) -> Image:
    rng = np.random.default_rng(0)
    arr = (rng.normal(size=(1, *shape)) * 200).astype(np.float32)
    affine = np.array([[-2.5, 0, 0, 10], [0, 0, 2.5, -5], [0, -3.0, 0, 30], [0, 0, 0, 1]])  # stored LIP-like
    return Image(arr, affine, ImageMeta(modality="CT", series_uid="1.2.3"))


# -- the streamed export ------------------------------------------------------------------
@pytest.mark.parametrize("slab", [1, 3, 7])
def test_export_resamples_before_deciding(slab):
    """Linear logit fields are interpolated exactly, so the labels must equal the argmax of the
    fields evaluated at each output voxel's network-grid position."""
    net_shape, out_shape = (12, 10, 9), (30, 25, 20)
    a = [n / o for n, o in zip(net_shape, out_shape, strict=True)]
    b = [0.5 * x - 0.5 for x in a]
    rng = np.random.default_rng(1)
    slopes, offsets = rng.normal(size=(4, 3)), rng.normal(size=4)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in net_shape], indexing="ij"))
    logits = np.einsum("cd,dijk->cijk", slopes, grid) + offsets[:, None, None, None]
    sink = GridExport.affine_map(net_shape, out_shape, a, b, [1, 1, 1], num_classes=4)
    sink.start(net_shape, None)
    for z0 in range(0, net_shape[2], slab):
        sink.consume(torch.from_numpy(logits[..., z0:z0 + slab]).float(), z0)
    labels = sink.finish()
    pos = np.stack(np.meshgrid(*[np.clip(ai * np.arange(n) + bi, 0, m - 1) for ai, bi, n, m in
                                 zip(a, b, out_shape, net_shape, strict=True)], indexing="ij"))
    expected = np.argmax(np.einsum("cd,dijk->cijk", slopes, pos) + offsets[:, None, None, None], axis=0)
    assert np.mean(labels == expected) > 0.999


def test_export_in_region_mode_paints_in_order():
    sink = GridExport.affine_map((4, 4, 4), (4, 4, 4), [1, 1, 1], [0, 0, 0], [1, 1, 1], num_classes=2,
                                 class_order=[1, 2])
    sink.start((4, 4, 4), None)
    logits = torch.zeros(2, 4, 4, 4)
    logits[0, :2] = 1.0  # region 0 (paints 1) in the first half
    logits[1, 1:3] = 1.0  # region 1 (paints 2), later, wins where both
    sink.consume(logits, 0)
    out = sink.finish()
    assert (out[0] == 1).all() and (out[1] == 2).all() and (out[2] == 2).all() and (out[3] == 0).all()


# -- the stages -------------------------------------------------------------------------------
def test_segment_image_returns_labels_on_the_input_grid(bundles, tmp_path):
    image = _ct()
    ctx = StageContext(stage="segment", workdir=tmp_path)
    out = get_stage("segment_image")({"bundle": str(bundles["organs"]), "precision": "fp32"}).run({"image": image}, ctx)
    labels = out["labels"]
    assert labels.is_label and labels.shape == image.shape and np.array_equal(labels.affine, image.affine)
    assert labels.meta.extra["labels"] == {0: "background", 1: "liver", 2: "spleen"}
    facts = ctx.facts["segment"]
    assert facts["recipe"] == "medpipe" and facts["network_grid"] != list(image.shape)
    assert facts["precision"] == "fp32" and facts["seconds_total"] > 0


def test_segment_image_refuses_a_bundle_for_another_modality(bundles, tmp_path):
    image = _ct()
    image.meta.modality = "MR"
    with pytest.raises(BundleError, match="is for CT, study is MR"):
        get_stage("segment_image")({"bundle": str(bundles["organs"])}).run({"image": image},
                                                                            StageContext(stage="s", workdir=tmp_path))


def test_merge_label_maps_first_claim_wins_and_names_travel():
    a = np.array([[[1, 2, 0, 0]]])
    b = np.array([[[2, 1, 1, 0]]])  # its 1 is "liver" too, its 2 "vertebrae"
    merged, names, colors = merge_label_maps([(a, {1: "liver", 2: "spleen"}, {1: [1, 1, 1]}),
                                              (b, {1: "liver", 2: "vertebrae"}, {2: [2, 2, 2]})])
    assert names == {1: "liver", 2: "spleen", 3: "vertebrae"} and colors == {1: [1, 1, 1], 3: [2, 2, 2]}
    assert merged.tolist() == [[[1, 2, 1, 0]]]  # voxel 0 stays liver (first claim); voxel 2 liver from b
    only, names2, _ = merge_label_maps([(a, {1: "liver", 2: "spleen"}, {}), (b, {1: "liver", 2: "vertebrae"}, {})],
                                       keep={"spleen"})
    assert names2 == {1: "spleen"} and only.tolist() == [[[0, 1, 0, 0]]]


def test_segment_bundles_merges_and_skips_bundles_without_requested_structures(bundles, tmp_path):
    image = _ct()
    ctx = StageContext(stage="segment", workdir=tmp_path)
    params = {"bundles": [str(bundles["organs"]), str(bundles["bones"])], "precision": "fp32"}
    merged = get_stage("segment_bundles")(params).run({"image": image}, ctx)["labels"]
    assert merged.shape == image.shape
    assert merged.meta.extra["labels"] == {1: "liver", 2: "spleen", 3: "vertebrae"}
    ctx2 = StageContext(stage="segment", workdir=tmp_path)
    only = get_stage("segment_bundles")({**params, "labels": ["vertebrae"]}).run({"image": image}, ctx2)["labels"]
    runs = ctx2.facts["segment"]["bundles"]
    assert runs["organs"].startswith("skipped") and "seconds_total" in runs["bones"]
    assert only.meta.extra["labels"] == {1: "vertebrae"}
    with pytest.raises(BundleError, match=r"structures \['pancreas'\] are in none of the bundles"):
        get_stage("segment_bundles")({**params, "labels": ["pancreas"]}).run({"image": image}, ctx2)


# -- the CLI ----------------------------------------------------------------------------------
def test_medpipe_segment_writes_one_file_per_structure_and_a_multilabel_file(bundles, tmp_path, capsys):
    image = _ct()
    study = tmp_path / "ct.nii.gz"
    write_volume(image, study)
    out = tmp_path / "segs"
    assert main(["segment", str(study), str(out), "--model", str(bundles["organs"]), "--model",
                 str(bundles["bones"]), "--statistics"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["liver.nii.gz", "run.json", "spleen.nii.gz", "statistics.json", "vertebrae.nii.gz"]
    liver = read_volume(out / "liver.nii.gz", is_label=True)
    assert liver.shape == image.shape and np.allclose(liver.affine, image.affine, atol=1e-5)
    assert set(np.unique(liver.array)) <= {0, 1}
    stats = json.loads((out / "statistics.json").read_text())
    assert set(stats["structures"]) <= {"liver", "spleen", "vertebrae"}

    ml = tmp_path / "all.nii.gz"
    assert main(["segment", str(study), str(ml), "--ml", "--model", str(bundles["organs"]), "--fast",
                 "--roi-subset", "spleen"]) == 0
    labels = read_volume(ml, is_label=True)
    assert labels.shape == image.shape and set(np.unique(labels.array)) <= {0, 1}
    assert load_bundle(bundles["organs"]).config.name == "organs"
    assert main(["segment", str(study), str(ml), "--ml", "--model", str(bundles["organs"])]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["segment", str(study), str(tmp_path / "folder"), "--ml"]) == 2
    assert "OUTPUT must be a file ending in" in capsys.readouterr().err
    assert main(["segment", str(study), str(tmp_path / "x.dcm"), "--ml", "--model", str(bundles["organs"])]) == 2
    err = capsys.readouterr().err
    assert "must write a DICOM SEG" in err and "volume file" in err
    assert not (tmp_path / "x.dcm").exists() and not list(tmp_path.glob(".medpipe-segment-*"))
