"""The whole chain with the real segment stage and a tiny (untrained) bundle.

The network's answer is meaningless here; what is checked is that bundle-driven
preprocessing, segmentation on the processed grid, restore_geometry /
restore_probabilities and the writers fit together and keep the geometry guarantee.
"""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import torch

from medpipe.data.dicom_writer import write_dicom_series
from medpipe.data.phantoms import ct_phantom
from medpipe.io.dicom import read_image
from medpipe.io.volumes import read_volume
from medpipe.pipeline.artifacts import ImageArtifact
from medpipe.pipeline.runner import run_pipeline
from medpipe.pipeline.spec import parse_pipeline


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    from medpipe.models import create_model
    from medpipe.models.bundle import save_bundle

    torch.manual_seed(0)
    cfg = {
        "name": "tiny", "architecture": "stunet-xs", "arch_config": {"in_channels": 1, "num_classes": 3},
        "modality": "CT", "channels": ["CT"],
        "labels": {0: {"name": "background"}, 1: {"name": "liver", "color": [220, 20, 60]},
                   2: {"name": "spleen", "color": [30, 144, 255]}},
        "preprocessing": {"orientation": "RAS", "spacing": [2.0, 2.0, 2.0],
                          "normalization": {"scheme": "ct", "clip": [-200, 300], "mean": 50.0, "std": 80.0},
                          "patch_size": [64, 64, 64]},
    }  # fmt: skip
    path = tmp_path_factory.mktemp("bundle") / "tiny"
    save_bundle(path, create_model("stunet_xs", in_channels=1, num_classes=3), cfg)
    return path


def test_segment_chain_restores_onto_the_dicom_grid(tmp_path: Path, tiny_bundle: Path) -> None:
    ct, _ = ct_phantom((48, 40, 20), (1.0, 1.1, 2.5), seed=1)
    study = tmp_path / "study"
    write_dicom_series(ct, study, shuffle=True)
    b = str(tiny_bundle)
    text = f"""
name: e2e
description: bundle-driven preprocessing, segment, restore, report, write
stages:
  load: {{kind: load_study, inputs: {{study: input.study}}}}
  reorient: {{kind: reorient, params: {{bundle: "{b}"}}, inputs: {{image: load.image}}}}
  crop: {{kind: crop_foreground, params: {{margin: 2}}, inputs: {{image: reorient.image}}}}
  norm: {{kind: normalize, params: {{bundle: "{b}"}}, inputs: {{image: crop.image}}}}
  resample: {{kind: resample, params: {{bundle: "{b}"}}, inputs: {{image: norm.image}}}}
  seg: {{kind: segment_probabilities, params: {{bundle: "{b}"}}, inputs: {{image: resample.image}}}}
  restore: {{kind: restore_geometry, inputs: {{labels: seg.labels, reference: load.image}}}}
  restore_p: {{kind: restore_probabilities, inputs: {{probabilities: seg.probabilities, reference: load.image}}}}
  stats: {{kind: statistics, inputs: {{labels: restore.labels, image: load.image}}}}
  write:
    kind: write
    params: {{formats: [nifti, dicom_seg], name: organs}}
    inputs: {{labels: restore.labels, source: load.source, reference: load.image}}
"""
    res = run_pipeline(parse_pipeline(text), study, tmp_path / "runs")
    assert res.ok, res.error
    dicom = read_image(study)
    art = res.run_dir / "artifacts"
    nifti = read_volume(art / "write" / "files.files" / "organs.nii.gz", is_label=True)
    assert nifti.shape == dicom.shape
    np.testing.assert_allclose(nifti.affine, dicom.affine, atol=1e-5)
    probs = ImageArtifact.load(art / "restore_p" / "probabilities")
    assert probs.shape == dicom.shape and np.allclose(probs.affine, dicom.affine, atol=1e-5)
    assert probs.n_channels == 3
    np.testing.assert_allclose(probs.array.sum(axis=0), 1.0, atol=1e-3)  # bf16 softmax upstream
    # Labels (one-hot restored) and arg-max of the restored probabilities agree almost everywhere.
    agree = (probs.array.argmax(axis=0) == nifti.array[0]).mean()
    assert agree >= 0.9
    table = json.loads((art / "stats" / "table.json").read_text())
    assert set(table["structures"]) == {"liver", "spleen"}  # background is not a structure
    counts = {n: int((nifti.array[0] == v).sum()) for v, n in ((1, "liver"), (2, "spleen"))}
    assert {n: r["voxels"] for n, r in table["structures"].items()} == counts
    present = [v for v in (1, 2) if counts[{1: "liver", 2: "spleen"}[v]]]
    if present:  # an untrained net may predict only background; then there is no SEG to check
        seg = hd.seg.segread(art / "write" / "files.files" / "organs.dcm")
        frames = seg.get_pixels_by_source_instance(
            dicom.meta.extra["SOPInstanceUIDs"], combine_segments=True, relabel=False
        )
        expect = np.zeros_like(frames)
        for s, v in enumerate(present, start=1):
            expect[nifti.array[0].transpose(2, 1, 0) == v] = s
        assert np.array_equal(frames, expect)
