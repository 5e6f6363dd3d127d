"""Shared fixtures: small MR phantom pairs and a tiny MICDIR bundle trained in seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medpipe.data.phantoms import mr_brain_phantom


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def brain_pair():
    """(fixed, fixed labels, moving, moving labels): two different 40x48x40 phantom heads at 2 mm."""
    f, fl = mr_brain_phantom((40, 48, 40), (2.0, 2.0, 2.0), seed=1, vary=True)
    m, ml = mr_brain_phantom((40, 48, 40), (2.0, 2.0, 2.0), seed=2, vary=True)
    return f, fl, m, ml


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A MICDIR bundle in atlas mode on three phantoms (1 epoch x 2 iterations, 32^3 grid)."""
    from medpipe.registration.recipe import build_dataset
    from medpipe.registration.training import RegTrainConfig, train_registration

    root = tmp_path_factory.mktemp("regbundle")
    ds = build_dataset({"generator": "phantoms", "cases": 3, "shape": [32, 36, 32], "seed": 5}, root / "ds")
    cfg = RegTrainConfig(name="tiny_micdir", atlas="phantom_00.nii.gz", grid=[32, 32, 32], crop=[32, 32, 32],
                         epochs=1, iters_per_epoch=2, val_pairs=1, threads=1, synthetic_fraction=0.5,
                         arch={"nodes": None}, weights={"supervised": 0.1})  # the shipped recipe's options
    res = train_registration(ds, root / "bundle", cfg, progress=False)
    assert np.isfinite(res.log[-1]["loss"])
    return res.bundle
