"""Bundles: save/load round trip and one clear BundleError per way a bundle can be broken."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
import yaml

from medpipe.errors import BundleError
from medpipe.models import create_model
from medpipe.models.bundle import CONFIG_FILE, WEIGHTS_FILE, BundleConfig, load_bundle, save_bundle

CFG = {
    "name": "tiny-abdomen",
    "version": "0.1",
    "description": "test bundle",
    "architecture": "stunet-xs",
    "arch_config": {"in_channels": 1, "num_classes": 3},
    "modality": "CT",
    "channels": ["CT"],
    "labels": {0: {"name": "background", "color": [0, 0, 0]}, 1: {"name": "liver", "color": [220, 20, 60]},
               2: {"name": "spleen", "color": [30, 144, 255]}},
    "preprocessing": {"orientation": "RAS", "spacing": [1.5, 1.5, 1.5],
                      "normalization": {"scheme": "ct", "clip": [-200, 300], "mean": 50.0, "std": 80.0},
                      "patch_size": [64, 64, 64], "tta_axes": [0, 1, 2], "crop_foreground": False},
    "training": {"dataset": "synthetic", "epochs": 1},
}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("stunet_xs", in_channels=1, num_classes=3)


@pytest.fixture()
def bundle_dir(tmp_path, model):
    save_bundle(tmp_path / "b", model, CFG)
    return tmp_path / "b"


def _edit_yaml(path, fn):
    doc = yaml.safe_load((path / CONFIG_FILE).read_text())
    fn(doc)
    (path / CONFIG_FILE).write_text(yaml.safe_dump(doc))


def test_round_trip_gives_identical_outputs(bundle_dir, model):
    bundle = load_bundle(bundle_dir, expect_modality="ct")
    assert bundle.config.architecture == "stunet_xs"  # user spelling normalised
    assert bundle.config.label_names == {0: "background", 1: "liver", 2: "spleen"}
    assert bundle.config.preprocessing.normalization.clip == (-200.0, 300.0)
    net = bundle.build_model()
    assert not net.training
    x = torch.randn(1, 1, 64, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), model.eval()(x))
    text = (bundle_dir / CONFIG_FILE).read_text()
    assert "spacing: [1.5, 1.5, 1.5]" in text and "\n  1:\n" in text  # readable, integer label ids


def test_missing_folder_and_files(tmp_path, bundle_dir):
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    no_weights = tmp_path / "nw"
    shutil.copytree(bundle_dir, no_weights)
    (no_weights / WEIGHTS_FILE).unlink()
    with pytest.raises(BundleError, match=f"has no {WEIGHTS_FILE}"):
        load_bundle(no_weights)
    (bundle_dir / CONFIG_FILE).unlink()
    with pytest.raises(BundleError, match=f"has no {CONFIG_FILE}"):
        load_bundle(bundle_dir)


def test_invalid_yaml_and_fields_name_the_field(bundle_dir):
    (bundle_dir / CONFIG_FILE).write_text("name: [unclosed\n")
    with pytest.raises(BundleError, match="not valid YAML"):
        load_bundle(bundle_dir)
    (bundle_dir / CONFIG_FILE).write_text(yaml.safe_dump(copy.deepcopy(CFG) | {"colour": 1}))
    with pytest.raises(BundleError, match="field 'colour': unknown field"):
        load_bundle(bundle_dir)
    bad = copy.deepcopy(CFG)
    bad["preprocessing"]["normalization"]["scheme"] = "minmax"
    (bundle_dir / CONFIG_FILE).write_text(yaml.safe_dump(bad))
    with pytest.raises(BundleError, match="field 'preprocessing.normalization.scheme'"):
        load_bundle(bundle_dir)
    bad = copy.deepcopy(CFG)
    bad["architecture"] = "resnet9000"
    (bundle_dir / CONFIG_FILE).write_text(yaml.safe_dump(bad))
    with pytest.raises(BundleError, match="field 'architecture': unknown architecture 'resnet9000'"):
        load_bundle(bundle_dir)


def test_modality_mismatch(bundle_dir):
    with pytest.raises(BundleError, match="bundle tiny-abdomen is for CT, study is MR"):
        load_bundle(bundle_dir, expect_modality="MR")


def test_labels_must_match_num_classes(bundle_dir):
    _edit_yaml(bundle_dir, lambda d: d["labels"].pop(2))
    with pytest.raises(BundleError, match=r"labels must be 0..2 .*num_classes=3"):
        load_bundle(bundle_dir)


def test_weights_for_other_architecture_name_the_tensor(bundle_dir):
    _edit_yaml(bundle_dir, lambda d: d["arch_config"].update(num_classes=4) or d["labels"].update(
        {3: {"name": "kidney", "color": [1, 2, 3]}}))
    with pytest.raises(BundleError, match=r"tensor 'seg_outputs.0.weight' has shape \[3, 64, 1, 1, 1\], the architecture needs \[4, 64"):
        load_bundle(bundle_dir)


def test_ct_normalization_needs_statistics():
    bad = copy.deepcopy(CFG)
    bad["preprocessing"]["normalization"] = {"scheme": "ct", "clip": [-1, 1]}
    with pytest.raises(ValueError, match="needs clip, mean and std"):
        BundleConfig.model_validate(bad)


def test_save_refuses_mismatched_model_and_leaves_nothing(tmp_path):
    other = create_model("stunet_xs", in_channels=2, num_classes=3)
    with pytest.raises(BundleError, match="model does not match stunet_xs"):
        save_bundle(tmp_path / "b", other, CFG)
    assert list(tmp_path.iterdir()) == []


def test_large_weights_warn(tmp_path):
    big = copy.deepcopy(CFG) | {"architecture": "stunet_s"}
    with pytest.warns(UserWarning, match="above the 10 MB limit"):
        save_bundle(tmp_path / "s", create_model("stunet_s", in_channels=1, num_classes=3), big)
