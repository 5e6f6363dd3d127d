"""Fixtures: small simulated k-space folders and a tiny trained CIRIM bundle."""

from __future__ import annotations

from pathlib import Path

import pytest
from recon_helpers import small_kspace

from medpipe.io.kspace import write_kspace


@pytest.fixture(scope="session")
def kspace_dir(tmp_path_factory) -> Path:
    """train/val/test folders of fully sampled k-space files."""
    root = tmp_path_factory.mktemp("kspace")
    for split, seeds in (("train", (1, 2)), ("val", (3,)), ("test", (4,))):
        for s in seeds:
            write_kspace(small_kspace(seed=s), root / split / f"phantom_{s}.h5")
    return root


@pytest.fixture(scope="session")
def tiny_bundle(kspace_dir, tmp_path_factory) -> Path:
    """A CIRIM bundle (h 4, 2 cascades x 2 steps) trained for a few iterations."""
    from medpipe.training.recon import ReconTrainConfig, train_recon

    out = tmp_path_factory.mktemp("bundles") / "tiny_cirim"
    cfg = ReconTrainConfig(arch={"hidden": 4, "cascades": 2, "steps": 2}, iterations=6, batch_size=2, crop_rows=32,
                           val_every=3, val_slices=2, threads=1, warmup=2)
    train_recon(kspace_dir / "train", out, cfg, val_dir=kspace_dir / "val", test_dir=kspace_dir / "test",
                progress=False)
    return out
