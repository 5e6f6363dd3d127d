"""A tiny nnU-Net-format phantom dataset (4 cases, 32^3 at ~12 mm: the whole adult-sized
phantom abdomen) shared by the training tests."""

from __future__ import annotations

import shutil

import pytest

TINY_SPACING = (12.0, 12.0, 10.0)


@pytest.fixture(scope="session")
def tiny_dataset_master(tmp_path_factory):
    from medpipe.data.nnunet_dataset import write_phantom_dataset

    folder = tmp_path_factory.mktemp("ds") / "Dataset900_Tiny"
    write_phantom_dataset(folder, 4, seed=1, modality="ct", shape=(32, 32, 32), spacing=TINY_SPACING,
                          progress=False, preview=False)
    return folder


@pytest.fixture()
def tiny_dataset(tiny_dataset_master, tmp_path):
    """A private copy each test may break."""
    dst = tmp_path / tiny_dataset_master.name
    shutil.copytree(tiny_dataset_master, dst)
    return dst


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models on a shared 2-core machine: one thread avoids oversubscription stalls."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
