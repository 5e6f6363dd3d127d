"""int8 for 2D bundles: the 2D graph is quantised on single slices and runs for any slice batch."""

from __future__ import annotations

import numpy as np
import torch

from medpipe.data.phantoms import ct_phantom
from medpipe.inference import predict
from medpipe.inference.quantize import quantize_bundle
from medpipe.models import create_model
from medpipe.models.bundle import load_bundle, save_bundle


def test_quantize_a_2d_bundle_and_run_it_slice_wise(tmp_path):
    torch.manual_seed(0)
    cfg = {"name": "q2d", "architecture": "paratranscnn_tiny", "arch_config": {"in_channels": 1, "num_classes": 3},
           "modality": "CT", "channels": ["CT"],
           "labels": {0: {"name": "background"}, 1: {"name": "liver"}, 2: {"name": "spleen"}},
           "preprocessing": {"orientation": "RAS", "spacing": [2.0, 2.0],
                             "normalization": {"scheme": "ct", "clip": [-200, 300], "mean": 50.0, "std": 80.0},
                             "patch_size": [32, 32]}}
    save_bundle(tmp_path / "b", create_model("paratranscnn_tiny", in_channels=1, num_classes=3), cfg)
    ct, _ = ct_phantom((40, 40, 8), (1.6, 1.6, 2.0), seed=1)
    ct.save(tmp_path / "c.nii.gz")
    bundle, report = quantize_bundle(tmp_path / "b", [tmp_path / "c.nii.gz"], tmp_path / "q", min_agreement=0.9,
                                     min_class_dice=0.0)
    assert report.accepted and bundle.config.quantization.patch_size == [32, 32]
    assert bundle.int8_path.is_file()
    net = load_bundle(tmp_path / "q").build_model()
    vol = np.random.default_rng(0).normal(size=(1, 40, 36, 5)).astype(np.float32)
    for k, v in ((1, vol[..., :1]), (3, vol)):  # the IR is reshaped to k slices per pass
        r8 = predict(net, v, [32, 32], num_classes=3, precision="int8", int8_model=bundle.int8_path, batch_size=k,
                     progress=False)
        r32 = predict(net, v, [32, 32], num_classes=3, precision="fp32", backend="torch", progress=False)
        assert r8.facts["precision"] == "int8" and r8.facts["openvino"]["input_shape"] == [k, 1, 32, 32]
        assert r8.labels.shape == v.shape[1:] and (r8.labels == r32.labels).mean() >= 0.95
