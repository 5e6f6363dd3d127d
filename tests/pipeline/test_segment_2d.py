"""2D bundles in pipelines: the shipped ct_organs_2d job keeps the geometry guarantee on a
DICOM series, pictures are segmented directly, and mix-ups fail with one sentence."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import torch
from PIL import Image as P

from medpipe.data.dicom_writer import write_dicom_series
from medpipe.data.phantoms import ct_phantom
from medpipe.data.synapse import SYNAPSE_LABELS
from medpipe.io.dicom import read_image
from medpipe.io.volumes import read_volume
from medpipe.pipeline.runner import run_pipeline
from medpipe.pipeline.spec import parse_pipeline

REPO = Path(__file__).resolve().parents[2]


def _bundle(folder: Path, channels: list[str], spacing, modality="CT", normalization=None) -> Path:
    from medpipe.models import create_model
    from medpipe.models.bundle import save_bundle

    torch.manual_seed(0)
    labels = {0: {"name": "background"}, **{k: {"name": n} for k, n in SYNAPSE_LABELS.items()}}
    cfg = {"name": folder.name, "architecture": "paratranscnn_tiny",
           "arch_config": {"in_channels": len(channels), "num_classes": 9}, "modality": modality,
           "channels": channels, "labels": labels,
           "preprocessing": {"orientation": "RAS", "spacing": spacing,
                             "normalization": normalization or {"scheme": "ct", "clip": [-200, 300], "mean": 50.0,
                                                                "std": 80.0},
                             "patch_size": [32, 32], "tta_axes": [1]}}
    return save_bundle(folder, create_model("paratranscnn_tiny", in_channels=len(channels), num_classes=9), cfg).path


@pytest.fixture(scope="module")
def bundle_2d(tmp_path_factory) -> Path:
    return _bundle(tmp_path_factory.mktemp("b") / "tiny2d", ["CT"], [2.0, 2.0])


def test_shipped_2d_pipeline_keeps_the_geometry_guarantee(tmp_path, bundle_2d):
    ct, _ = ct_phantom((40, 36, 14), (1.1, 0.9, 2.5), seed=3)
    study = tmp_path / "study"
    write_dicom_series(ct, study, shuffle=True)
    text = (REPO / "pipelines" / "ct_organs_2d.yaml").read_text().replace("ct_organs_2d_phantom", str(bundle_2d))
    res = run_pipeline(parse_pipeline(text), study, tmp_path / "runs")
    assert res.ok, res.error
    dicom = read_image(study)
    files = res.run_dir / "artifacts" / "write" / "files.files"
    nifti = read_volume(files / "organs.nii.gz", is_label=True)
    assert nifti.shape == dicom.shape and np.allclose(nifti.affine, dicom.affine, atol=1e-5)
    record = json.loads((res.run_dir / "run.json").read_text())
    facts = record["stages"]["segment"]["facts"]["segment"]
    assert facts["slicewise"] and facts["patch_size"][:2] == [32, 32]
    if (files / "organs.dcm").exists():  # an untrained net may predict only background
        seg = hd.seg.segread(files / "organs.dcm")
        assert seg.number_of_frames > 0


def _picture_pipeline(bundle: Path, formats="[png, nifti]") -> str:
    b = str(bundle)
    return f"""
name: picture
description: a 2D picture straight through a 2D bundle
stages:
  load: {{kind: load_study, inputs: {{study: input.study}}}}
  norm: {{kind: normalize, params: {{bundle: "{b}"}}, inputs: {{image: load.image}}}}
  seg: {{kind: segment, params: {{bundle: "{b}"}}, inputs: {{image: norm.image}}}}
  write: {{kind: write, params: {{formats: {formats}, name: mask}}, inputs: {{labels: seg.labels, reference: load.image}}}}
"""


def test_pictures_are_segmented_directly_and_mixups_are_refused(tmp_path):
    grey = _bundle(tmp_path / "grey2d", ["grey"], [1.0, 1.0], modality="MR", normalization={"scheme": "zscore"})
    rng = np.random.default_rng(0)
    P.fromarray(rng.integers(0, 255, (45, 60), dtype=np.uint8)).save(tmp_path / "xray.png")
    res = run_pipeline(parse_pipeline(_picture_pipeline(grey)), tmp_path / "xray.png", tmp_path / "runs")
    assert res.ok, res.error
    mask = np.asarray(P.open(res.run_dir / "artifacts" / "write" / "files.files" / "mask.png"))
    assert mask.shape == (45, 60) and mask.max() <= 8  # on the picture, pixel for pixel

    P.fromarray(rng.integers(0, 255, (45, 60, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    res = run_pipeline(parse_pipeline(_picture_pipeline(grey)), tmp_path / "photo.png", tmp_path / "runs2")
    assert not res.ok
    assert "expects 1 channel(s) (grey), the image has 3; it looks like an RGB image" in res.error
    assert not (res.run_dir / "artifacts" / "write").exists()  # nothing half-written

    P.fromarray(rng.integers(0, 255, (12, 60), dtype=np.uint8)).save(tmp_path / "strip.png")
    res = run_pipeline(parse_pipeline(_picture_pipeline(grey)), tmp_path / "strip.png", tmp_path / "runs3")
    assert not res.ok and "is 12x60 pixels in-plane, smaller than the 16x16 minimum of ParaTransCNN" in res.error


def test_multichannel_study_for_a_one_channel_2d_bundle(tmp_path, bundle_2d):
    import nibabel as nib

    arr = np.random.default_rng(1).normal(size=(40, 40, 6, 2)).astype(np.float32)
    nib.Nifti1Image(arr, np.diag([1.0, 1.0, 2.0, 1.0])).to_filename(str(tmp_path / "two.nii.gz"))
    res = run_pipeline(parse_pipeline(_picture_pipeline(bundle_2d, "[nifti]")), tmp_path / "two.nii.gz",
                       tmp_path / "runs")
    assert not res.ok
    assert "expects 1 channel(s) (CT), the image has 2; the study has more channels" in res.error
