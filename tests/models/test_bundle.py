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


# --- nnU-Net v2 import ----------------------------------------------------------------------

NET_POOLS = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]  # nnU-Net v2 plans style


def _write_nnunet_results(root, reader, transpose_forward):
    """A results folder as nnU-Net v2 + the STU-Net trainer leave it, from our STU-Net-xs."""
    import json

    from medpipe.models.stunet import STUNet

    torch.manual_seed(1)
    net = STUNet(1, 3, widths=(8, 16, 32, 64, 64, 64), depth=[1] * 6, pool_op_kernel_sizes=NET_POOLS[1:])
    for p in net.parameters():  # non-trivial norms and biases, so a wrong permutation shows
        p.data.add_(0.1 * torch.randn_like(p))
    plans = {
        "dataset_name": "Dataset777_Toy", "plans_name": "nnUNetPlans", "image_reader_writer": reader,
        "transpose_forward": transpose_forward, "transpose_backward": transpose_forward,
        "configurations": {
            "3d_fullres": {"patch_size": [32, 64, 96], "spacing": [3.0, 0.8, 0.7],
                           "normalization_schemes": ["CTNormalization"], "pool_op_kernel_sizes": NET_POOLS,
                           "conv_kernel_sizes": [[3, 3, 3]] * 6},
            "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"},
        },
        "foreground_intensity_properties_per_channel": {
            "0": {"mean": 37.3, "std": 45.5, "percentile_00_5": -135.3, "percentile_99_5": 161.1}},
    }
    dataset = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2},
               "file_ending": ".nii.gz"}
    (root / "fold_0").mkdir(parents=True)
    (root / "plans.json").write_text(json.dumps(plans))
    (root / "dataset.json").write_text(json.dumps(dataset))
    torch.save({"network_weights": net.state_dict(), "trainer_name": "STUNetTrainer_xs",
                "init_args": {"configuration": "3d_fullres", "fold": 0}, "current_epoch": 1000,
                "inference_allowed_mirroring_axes": (0, 1, 2)}, root / "fold_0" / "checkpoint_final.pth")
    return net.eval()


@pytest.mark.parametrize(("reader", "transpose_forward", "ours"), [
    ("SimpleITKIO", [0, 1, 2], [2, 1, 0]),   # sitk arrays are (z, y, x): network axis a = our axis 2 - a
    ("NibabelIO", [1, 0, 2], [1, 0, 2]),     # nibabel arrays are (x, y, z), then transposed
])
def test_import_nnunet_matches_the_nnunet_network(tmp_path, reader, transpose_forward, ours):
    from medpipe.models.nnunet_import import import_nnunet

    net = _write_nnunet_results(tmp_path / "res", reader, transpose_forward)
    bundle = import_nnunet(tmp_path / "res", tmp_path / "bundle", fold=0)
    cfg = bundle.config
    assert cfg.architecture == "stunet_xs" and cfg.modality == "CT" and cfg.channels == ["CT"]
    assert cfg.label_names == {0: "background", 1: "liver", 2: "tumour"}
    norm = cfg.preprocessing.normalization
    assert (norm.scheme, norm.clip, norm.mean, norm.std) == ("ct", (-135.3, 161.1), 37.3, 45.5)
    inv = [ours.index(b) for b in range(3)]
    assert cfg.preprocessing.spacing == [[3.0, 0.8, 0.7][i] for i in inv]
    assert cfg.preprocessing.patch_size == [[32, 64, 96][i] for i in inv]
    assert cfg.preprocessing.tta_axes == [0, 1, 2] and cfg.preprocessing.crop_foreground
    assert cfg.training["trainer"] == "STUNetTrainer_xs"

    to_net = [0, 1] + [2 + o for o in ours]
    x_ours = torch.randn(1, 1, *[(16, 32, 64)[i] for i in inv])  # smallest input the pools allow
    with torch.no_grad():
        expected = net(x_ours.permute(*to_net))
        got = bundle.build_model()(x_ours).permute(*to_net)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_import_nnunet_errors(tmp_path):
    from medpipe.models.nnunet_import import import_nnunet

    with pytest.raises(BundleError, match="does not exist"):
        import_nnunet(tmp_path / "none", tmp_path / "b")
    _write_nnunet_results(tmp_path / "res", "SimpleITKIO", [0, 1, 2])
    with pytest.raises(BundleError, match="has no fold_all/checkpoint_final.pth"):
        import_nnunet(tmp_path / "res", tmp_path / "b", fold="all")
    (tmp_path / "res" / "fold_0" / "checkpoint_final.pth").rename(tmp_path / "res" / "fold_0" / "other.pth")
    with pytest.raises(BundleError, match=r"has no fold_\*/checkpoint_final.pth"):
        import_nnunet(tmp_path / "res", tmp_path / "b")  # every fold present: none
    torch.save({"network_weights": {"encoder.stages.0.weight": torch.zeros(1)}},
               tmp_path / "res" / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(BundleError, match="neither an nnU-Net U-Net .* nor an STU-Net"):
        import_nnunet(tmp_path / "res", tmp_path / "b", fold=0)
    assert not (tmp_path / "b").exists()


def test_cli_show_and_import(tmp_path, bundle_dir, capsys):
    from medpipe.cli import main

    assert main(["models", "show", str(bundle_dir)]) == 0
    out = capsys.readouterr().out
    assert "stunet_xs" in out and "spleen" in out and "clip [-200.0, 300.0]" in out
    _write_nnunet_results(tmp_path / "res", "SimpleITKIO", [0, 1, 2])
    assert main(["models", "import-nnunet", str(tmp_path / "res"), str(tmp_path / "imp"), "--fold", "0",
                 "--name", "toy"]) == 0
    assert load_bundle(tmp_path / "imp").config.name == "toy"
    assert main(["models", "import-nnunet", str(tmp_path / "res"), str(tmp_path / "imp"), "--fold", "0"]) == 2
    assert "already exists" in capsys.readouterr().err
