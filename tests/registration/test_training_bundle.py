"""Training pieces (crop sampling, synthetic warps) and the shipped brain bundle's contents."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import medpipe
from medpipe.data.deformations import augment_intensity, random_displacement
from medpipe.errors import BundleError
from medpipe.models.bundle import MAX_SHIPPED_WEIGHTS_MB, load_bundle
from medpipe.pipeline.stage import StageContext, get_stage
from medpipe.registration import spatial
from medpipe.registration.bundle import load_registration_bundle, registration_settings
from medpipe.registration.training import RegTrainConfig, _crop_sample, _draw_pair, _Volume

SHIPPED = Path(medpipe.__file__).parent / "bundles" / "brain_micdir"


def test_crop_sampling_equals_warping_the_whole_grid_then_cropping():
    rng = np.random.default_rng(0)
    vol = rng.random((24, 28, 20)).astype(np.float32)
    disp = random_displacement(vol.shape, rng, amplitude=1.5)
    full = spatial.warp(torch.from_numpy(vol)[None, None], disp)
    part = _crop_sample(vol, disp, [3, 5, 2], [16, 16, 16])
    assert torch.allclose(part, full[:, :, 3:19, 5:21, 2:18], atol=1e-5)
    assert float(spatial.jacobian_determinant(disp).min()) > 0  # the synthetic warps never fold


def test_synthetic_pair_truth_maps_moving_onto_fixed_both_ways():
    """The supervised term's targets: the known fields must actually align the pair."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, 32)] * 3, indexing="ij")
    blob = np.exp(-(((x - 0.2) ** 2 + y**2 + (z + 0.1) ** 2) / 0.3)) + 0.5 * (np.sin(4 * x) * np.cos(3 * y) > 0.3)
    vol = _Volume("blob", (blob / blob.max()).astype(np.float32), None)
    cfg = RegTrainConfig(crop=[32, 32, 32], warp_amplitude=1.0, intensity_strength=0.0)
    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(4):
        f, m, truth = _draw_pair([vol], cfg, rng, atlas_mode=False, with_truth=True)
        assert truth is not None and truth[0].shape == (1, 3, 32, 32, 32)
        before = _inner_mse(f, m)
        for fixed, moving, field in ((f, m, truth[0]), (m, f, truth[1])):
            sampled = _inner_mse(fixed, spatial.warp(moving, field))
            if before > 1e-4:
                assert sampled < 0.05 * before
                checked += 1
    assert checked >= 4
    _, _, none = _draw_pair([vol], cfg, rng, atlas_mode=False, with_truth=False)
    assert none is None


def _inner_mse(a: torch.Tensor, b: torch.Tensor, margin: int = 6) -> float:
    """Mean squared difference away from the border (where a pull-back samples outside)."""
    inner = (..., *[slice(margin, -margin)] * 3)
    return float(((a - b) ** 2)[inner].mean())


def test_intensity_augmentation_keeps_background_and_range():
    x = torch.zeros(1, 1, 16, 16, 16)
    x[..., 4:12, 4:12, 4:12] = torch.linspace(0.2, 1.0, 8)
    y = augment_intensity(x, np.random.default_rng(1))
    assert float(y.min()) >= 0 and float(y.max()) <= 1 and float(y[..., :2, :, :].abs().max()) == 0
    assert not torch.allclose(x, y)


def test_shipped_brain_bundle_is_small_complete_and_refused_by_segment(tmp_path):
    bundle, settings = load_registration_bundle("brain_micdir")
    assert bundle.path.resolve() == SHIPPED.resolve()
    weights_mb = sum(f.stat().st_size for f in SHIPPED.rglob("*") if f.is_file()) / 1e6
    assert weights_mb < MAX_SHIPPED_WEIGHTS_MB
    cfg = bundle.config
    assert cfg.architecture == "micdir" and cfg.task == "registration" and cfg.modality == "MR"
    assert settings.grid == [96, 96, 96] and settings.integration_steps == 7
    assert cfg.training["spacing"] == 2.0 and cfg.evaluation["train_seconds"] < 3600
    from medpipe.io.volumes import read_volume

    labels = read_volume(SHIPPED / settings.atlas_labels, is_label=True)
    assert labels.meta.extra["labels"] == {1: "grey_matter", 2: "white_matter"}
    assert (SHIPPED / "learning_curve.png").is_file()
    import json

    held_out = json.loads((SHIPPED / "held_out_evaluation.json").read_text())  # written by benchmarks/registration.py
    assert {"Colin27 -> MNI152", "MNI152 -> Colin27"} <= set(held_out["pairs"])
    with pytest.raises(BundleError, match="is a registration bundle; the segment stage needs a segmentation bundle .use the register"):
        image = read_volume(SHIPPED / settings.atlas_image)
        get_stage("segment")({"bundle": "brain_micdir"}).run({"image": image}, StageContext("s", tmp_path))
    with pytest.raises(BundleError, match="not a registration model"):
        registration_settings(load_bundle(Path(medpipe.__file__).parent / "bundles" / "ct_organs_phantom"))
