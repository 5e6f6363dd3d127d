"""The brain-tumour job: multi-contrast loading (BraTS / nnU-Net names, grid checks) and the
shipped pipeline end to end with the shipped reversible-U-Net bundle on a held-out phantom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medpipe.data.brain_tumour import BRATS_CHANNELS, brain_tumour_phantom, brats_regions
from medpipe.errors import InputError
from medpipe.io.volumes import read_volume, write_volume
from medpipe.metrics import dice
from medpipe.pipeline.stages.load_channels import find_channel_files

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "medpipe" / "bundles" / "brain_tumour_phantom"


def _write_case(folder: Path, names: list[str], seed: int = 77):
    img, lab = brain_tumour_phantom(seed=seed, vary=True)
    folder.mkdir(parents=True, exist_ok=True)
    for c, name in enumerate(names):
        write_volume(img.with_array(img.array[c:c + 1]), folder / name)
    return img, lab


def test_channel_files_by_brats_and_nnunet_names(tmp_path):
    names20 = ["BraTS20_Training_001_t1.nii.gz", "BraTS20_Training_001_t1ce.nii.gz",
               "BraTS20_Training_001_t2.nii.gz", "BraTS20_Training_001_flair.nii.gz"]
    _write_case(tmp_path / "b20", names20[::-1])
    assert [f.name for f in find_channel_files(tmp_path / "b20", list(BRATS_CHANNELS))] == names20
    names23 = ["BraTS-GLI-00000-000-t1n.nii.gz", "BraTS-GLI-00000-000-t1c.nii.gz", "BraTS-GLI-00000-000-t2w.nii.gz",
               "BraTS-GLI-00000-000-t2f.nii.gz"]
    _write_case(tmp_path / "b23", names23)
    assert [f.name for f in find_channel_files(tmp_path / "b23", list(BRATS_CHANNELS))] == names23
    nn = [f"case_{c:04d}.nii.gz" for c in range(4)]
    _write_case(tmp_path / "nn", nn)
    assert [f.name for f in find_channel_files(tmp_path / "nn", list(BRATS_CHANNELS))] == nn
    (tmp_path / "b20" / names20[3]).unlink()
    with pytest.raises(InputError, match="no file for channel FLAIR"):
        find_channel_files(tmp_path / "b20", list(BRATS_CHANNELS))


def test_contrasts_on_different_grids_are_refused(tmp_path):
    from medpipe.pipeline.runner import run_pipeline
    from medpipe.pipeline.spec import parse_pipeline

    img, _ = _write_case(tmp_path / "s", [f"c_{c:04d}.nii.gz" for c in range(4)])
    shifted = img.with_array(img.array[3:4])
    aff = shifted.affine.copy()
    aff[0, 3] += 5.0
    write_volume(shifted.with_geometry(shifted.array, aff), tmp_path / "s" / "c_0003.nii.gz")
    spec = parse_pipeline("""
name: t
description: load four contrasts
stages:
  load: {kind: load_channels, params: {channels: [T1, T1c, T2, FLAIR]}, inputs: {study: input.study}}
outputs: [load.image]
""")
    run = run_pipeline(spec, tmp_path / "s", tmp_path / "run")
    assert run.status == "failed"
    assert "not on the voxel grid of c_0000.nii.gz" in run.error


@pytest.mark.skipif(not (SHIPPED / "weights.safetensors").exists(), reason="shipped brain bundle not trained yet")
def test_shipped_pipeline_segments_a_held_out_phantom(tmp_path):
    from medpipe.cli import main

    names = ["p_t1.nii.gz", "p_t1ce.nii.gz", "p_t2.nii.gz", "p_flair.nii.gz"]
    _, lab = _write_case(tmp_path / "study", names, seed=4242)  # not a training seed
    rc = main(["run", str(ROOT / "pipelines" / "brain_tumour.yaml"), str(tmp_path / "study"), "-o", str(tmp_path / "runs")])
    assert rc == 0
    out = next((tmp_path / "runs").rglob("tumour*.nii.gz"))
    pred = read_volume(out)
    assert pred.shape == lab.shape and np.allclose(pred.affine, lab.affine, atol=1e-4)
    gt, got = brats_regions(lab.array[0]), brats_regions(pred.array[0])
    assert dice(got["whole_tumor"], gt["whole_tumor"]) > 0.7
    assert dice(got["tumor_core"], gt["tumor_core"]) > 0.5
