"""2D training: slices of 3D volumes and truly 2D pictures, Synapse labels, resume, clear refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medpipe.errors import InputError
from medpipe.models.bundle import load_bundle
from medpipe.training.config import TrainConfig
from medpipe.training.trainer import CHECKPOINT, train


@pytest.fixture(scope="module")
def synapse_dataset(tmp_path_factory):
    from medpipe.data.nnunet_dataset import write_phantom_dataset

    folder = tmp_path_factory.mktemp("ds2d") / "Dataset901_Synapse"
    write_phantom_dataset(folder, 4, seed=2, shape=(32, 32, 12), labels="synapse", progress=False, preview=False)
    return folder


def _cfg(**kw):
    base = dict(model="paratranscnn_tiny", slices="axial", epochs=2, iters_per_epoch=2, batch_size=2, fold=0,
                n_folds=4, val_every=1, checkpoint_every=1, precision="fp32", seed=0, momentum=0.9,
                weight_decay=1e-4, nesterov=False)
    return TrainConfig(**{**base, **kw})


def test_synapse_labels_and_a_2d_bundle_from_axial_slices(synapse_dataset, tmp_path):
    meta = json.loads((synapse_dataset / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "spleen": 1, "kidney_right": 2, "kidney_left": 3, "gallbladder": 4,
                              "liver": 5, "stomach": 6, "aorta": 7, "pancreas": 8}
    out = tmp_path / "bundle"
    result = train(synapse_dataset, out, _cfg(), progress=False)
    cfg = load_bundle(out, expect_modality="CT").config
    pre = cfg.preprocessing
    assert cfg.architecture == "paratranscnn_tiny" and cfg.arch_config == {"in_channels": 1, "num_classes": 9}
    assert pre.orientation == "RAS" and len(pre.spacing) == 2 and pre.patch_size == [32, 32]
    assert pre.tta_axes == [1]  # kidneys are sided: no left-right mirroring
    assert cfg.labels[4].name == "gallbladder" and cfg.labels[4].color == (139, 150, 98)
    assert all(r["val_dice"] is not None for r in result.log)  # validation Dice every epoch
    assert cfg.training["slices"] == "axial" and cfg.evaluation["cases"] == 1
    net = load_bundle(out).build_model()
    assert net(torch.zeros(1, 1, 32, 32)).shape == (1, 9, 32, 32)


def test_2d_resume_reproduces_the_run_with_albumentations_state(synapse_dataset, tmp_path):
    cfg = _cfg(epochs=2)
    straight = train(synapse_dataset, None, cfg, work_dir=tmp_path / "a", progress=False)
    train(synapse_dataset, None, cfg, work_dir=tmp_path / "b", progress=False, stop_after_epoch=0)
    resumed = train(synapse_dataset, None, cfg, work_dir=tmp_path / "b", resume=True, progress=False)
    a = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["train_loss"] for r in straight.log] == [r["train_loss"] for r in resumed.log]


def test_2d_refusals_before_any_work(synapse_dataset, tmp_path):
    with pytest.raises(InputError, match="holds 3D volumes .* pass --slices axial"):
        train(synapse_dataset, tmp_path / "x", _cfg(slices=None), progress=False)
    with pytest.raises(InputError, match="stunet_xs is a 3D network"):
        train(synapse_dataset, tmp_path / "x", _cfg(model="stunet_xs"), progress=False)
    with pytest.raises(InputError, match="two multiples of 16"):
        train(synapse_dataset, tmp_path / "x", _cfg(patch_size=[40, 40]), progress=False)
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.work").exists()


def _picture_dataset(folder, rgb: bool, declared: int):
    """A truly 2D nnU-Net dataset of PNG pictures (axial phantom slices as 8-bit grey/RGB)."""
    from PIL import Image as P

    from medpipe.data.phantoms import ct_phantom

    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for i in range(4):
        ct, seg = ct_phantom((48, 48, 8), (1.0, 1.0, 2.0), seed=i, vary=True)
        grey = np.clip((ct.array[0, :, :, 4] + 200) / 500 * 255, 0, 255).astype(np.uint8)
        P.fromarray(np.stack([grey] * 3, -1) if rgb else grey).save(folder / "imagesTr" / f"c{i}_0000.png")
        P.fromarray((seg.array[0, :, :, 4] == 1).astype(np.uint8)).save(folder / "labelsTr" / f"c{i}.png")
    channels = {"0": "R", "1": "G", "2": "B"} if declared == 3 else {"0": "grey"}
    (folder / "dataset.json").write_text(json.dumps({"channel_names": channels, "labels": {"background": 0, "liver": 1},
                                                     "numTraining": 4, "file_ending": ".png"}))
    return folder


def test_truly_2d_pictures_grey_and_rgb(tmp_path):
    grey = _picture_dataset(tmp_path / "grey", rgb=False, declared=1)
    cfg = _cfg(model="transdae_tiny", slices=None, patch_size=[48, 48], epochs=1, iters_per_epoch=1)
    train(grey, tmp_path / "b1", cfg, progress=False)
    b1 = load_bundle(tmp_path / "b1").config
    assert b1.channels == ["grey"] and b1.preprocessing.spacing == [1.0, 1.0] and b1.modality == "MR"
    from medpipe.training.dataset import load_case, open_dataset, validate_dataset

    rgb = validate_dataset(open_dataset(_picture_dataset(tmp_path / "rgb", rgb=True, declared=3)))
    assert len(rgb.cases[0].images) == 1 and load_case(rgb.cases[0])[0].n_channels == 3  # nnU-Net: one file, 3 channels
    confused = _picture_dataset(tmp_path / "confused", rgb=True, declared=1)
    with pytest.raises(InputError, match=r"c0_0000.png holds 3 channel\(s\) \(an RGB picture\?\) but the dataset "
                                         r"declares 1 \(grey\)"):
        train(confused, tmp_path / "b4", cfg, progress=False)
