"""Importing genuine nnU-Net v2 results folders, and agreeing with nnU-Net's own predictor.

The fixtures under ``tests/fixtures/nnunet`` were written by the real ``nnunetv2`` package
(planner, preprocessing, trainer, checkpoint, predictor; ``make nnunet-fixtures``): a
PlainConvUNet with two folds, the NoMirroring trainer family TotalSegmentator uses, a ResEnc
M network, the same dataset's plans in the old (2.2.1) and current (2.8.1) formats, and
nnU-Net's predictions on a held-out case.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medpipe.errors import BundleError
from medpipe.io.volumes import read_volume
from medpipe.models.bundle import load_bundle
from medpipe.models.nnunet_import import import_nnunet, import_nnunet_cascade
from medpipe.models.nnunet_plans import arch_config_from_kwargs, configuration, configuration_architecture

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nnunet"
RESULTS = FIXTURES / "results" / "Dataset901_Phantom"
PLAIN = RESULTS / "nnUNetTrainer_1epoch__nnUNetPlans_tiny__3d_fullres"
NOMIRROR = RESULTS / "nnUNetTrainer_250epochs_NoMirroring__nnUNetPlans_tiny__3d_fullres"
RESENC = RESULTS / "nnUNetTrainer_1epoch__nnUNetResEncUNetMPlans_tiny__3d_fullres"
LOWRES = RESULTS / "nnUNetTrainerNoDA__nnUNetPlans_tinycascade__3d_lowres"
CASCADE = RESULTS / "nnUNetTrainer_1epoch__nnUNetPlans_tinycascade__3d_cascade_fullres"
CASE = next((FIXTURES / "imagesTs").glob("*_0000.nii.gz"))


def _prediction(folder: Path, name: str) -> np.ndarray:
    tag = folder.name.removesuffix("__3d_fullres")
    return read_volume(FIXTURES / "predictions" / tag / name, is_label=True).array[0]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("imported")
    return {
        "plain_fold0": import_nnunet(PLAIN, root / "plain0", 0).path,
        "plain_folds": import_nnunet(PLAIN, root / "plain01").path,  # every fold present: an ensemble
        "nomirror": import_nnunet(NOMIRROR, root / "nomirror", 0).path,
        "resenc": import_nnunet(RESENC, root / "resenc", 0).path,
    }


def test_both_plans_formats_describe_the_same_network():
    new = json.loads((FIXTURES / "plans_2.8.1.json").read_text())
    old = json.loads((FIXTURES / "plans_2.2.1.json").read_text())
    assert "architecture" in new["configurations"]["3d_fullres"]
    assert "UNet_class_name" in old["configurations"]["3d_fullres"]  # what the importer used to crash on
    arch = {}
    for tag, plans in (("new", new), ("old", old)):
        name, kwargs = configuration_architecture(configuration(plans, "3d_fullres"))
        arch[tag] = arch_config_from_kwargs(name, kwargs, in_channels=1, num_classes=9)
    assert arch["new"][0] == arch["old"][0] == "nnunet_plain_unet"
    assert arch["new"][1] == arch["old"][1]


def test_imported_bundles_carry_nnunets_facts(bundles):
    plain = load_bundle(bundles["plain_fold0"]).config
    assert plain.architecture == "nnunet_plain_unet" and plain.modality == "CT"
    assert plain.preprocessing.recipe == "nnunet" and plain.preprocessing.orientation == "native"
    assert plain.preprocessing.tta_axes == [0, 1, 2]
    assert plain.preprocessing.normalization.scheme == "ct"
    assert plain.label_names[1] == "liver" and plain.num_classes == 9
    assert plain.training["trainer"] == "nnUNetTrainer_1epoch"
    # A NoMirroring trainer writes inference_allowed_mirroring_axes = None: no mirroring at all.
    nomirror = load_bundle(bundles["nomirror"]).config
    assert nomirror.preprocessing.tta_axes == [] and nomirror.training["mirror_axes"] is None
    assert load_bundle(bundles["resenc"]).config.architecture == "nnunet_resenc_unet"
    ens = load_bundle(bundles["plain_folds"])
    assert ens.config.ensemble == ["weights_fold_1.safetensors"] and len(ens.build_models()) == 2


def test_shared_weights_are_stored_once_and_load_strictly(bundles):
    from safetensors import safe_open

    bundle = load_bundle(bundles["plain_fold0"])
    ckpt = torch.load(PLAIN / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    official = ckpt["network_weights"]
    with safe_open(str(bundle.weights_path), framework="pt") as f:
        stored = set(f.keys())
        aliases = json.loads(f.metadata()["aliases"])
    distinct = {v.untyped_storage().data_ptr() for v in official.values()}
    assert len(stored) == len(distinct) < len(official)  # nnU-Net lists tensors under several names
    assert set(aliases) | stored == set(official)
    model = bundle.build_model()  # strict load of every official name
    assert set(model.state_dict()) == set(official)


@pytest.mark.parametrize(("which", "prediction", "tta"), [
    ("plain_fold0", "fold0_tta0.nii.gz", False),
    ("plain_fold0", "fold0_tta1.nii.gz", True),
    ("plain_folds", "folds01_tta0.nii.gz", False),
    ("nomirror", "fold0_tta1.nii.gz", True),  # nnU-Net asked to mirror a NoMirroring model does not
    ("resenc", "fold0_tta0.nii.gz", False),
])
def test_labels_agree_with_nnunets_predictor(bundles, which, prediction, tta):
    from medpipe.inference.bundle_segment import segment_image

    folder = {"plain_fold0": PLAIN, "plain_folds": PLAIN, "nomirror": NOMIRROR, "resenc": RESENC}[which]
    reference = _prediction(folder, prediction)
    image = read_volume(CASE)
    result = segment_image(image, load_bundle(bundles[which]), tta=tta, backend="torch", precision="fp32",
                           accumulation="fp32", progress=False)
    labels = result.labels
    assert labels.shape == image.shape and np.allclose(labels.affine, image.affine)
    # the reference really segments something (the tiny ResEnc M learns the vertebrae first)
    assert len(np.unique(reference)) > (1 if which == "resenc" else 2)
    assert np.unique(labels.array[0]).tolist() == np.unique(reference).tolist()
    agreement = float(np.mean(labels.array[0] == reference))
    assert agreement >= 0.999, agreement


def test_cascade_agrees_with_nnunets_two_stage_prediction(tmp_path):
    """3d_lowres, then 3d_cascade_fullres fed the first stage's one-hot labels: as nnU-Net's
    predictor with ``folder_with_segs_from_prev_stage`` (its own low-res labels)."""
    from medpipe.inference.bundle_segment import segment_image

    bundle = import_nnunet_cascade(LOWRES, CASCADE, tmp_path / "cascade", 0)
    assert bundle.config.cascade is not None
    first_stage = load_bundle(bundle.path / bundle.config.cascade.previous).config
    assert "3d_lowres" in first_stage.description and first_stage.cascade is None
    assert bundle.config.arch_config["in_channels"] == 1 + len(bundle.config.cascade.one_hot_labels)
    image = read_volume(CASE)
    result = segment_image(image, bundle, tta=False, backend="torch", precision="fp32", accumulation="fp32",
                           progress=False)
    first = read_volume(FIXTURES / "predictions" / "cascade" / "lowres" / CASE.name.replace("_0000", ""),
                        is_label=True).array[0]
    reference = read_volume(FIXTURES / "predictions" / "cascade" / "cascade_tta0.nii.gz", is_label=True).array[0]
    assert len(np.unique(first)) > 1 and len(np.unique(reference)) > 2
    assert "cascade_first_stage" in result.facts
    assert float(np.mean(result.labels.array[0] == reference)) >= 0.999


def test_best_checkpoint_and_errors(tmp_path):
    best = import_nnunet(PLAIN, tmp_path / "best", 0, checkpoint="best")
    assert best.config.training["checkpoint"] == "checkpoint_best.pth"
    with pytest.raises(BundleError, match="has no fold_1/checkpoint_best.pth"):
        import_nnunet(PLAIN, tmp_path / "b1", 1, checkpoint="best")
    broken = tmp_path / "broken"
    shutil.copytree(PLAIN, broken)
    plans = json.loads((broken / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = "my_lab.MyUNet"
    (broken / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(BundleError, match="network class my_lab.MyUNet is not supported"):
        import_nnunet(broken, tmp_path / "b2", 0)
    (broken / "fold_0" / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(BundleError, match="is not a readable PyTorch checkpoint"):
        import_nnunet(broken, tmp_path / "b3", 0)
    assert not any((tmp_path / n).exists() for n in ("b1", "b2", "b3"))
