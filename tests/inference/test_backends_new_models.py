"""Which inference backends the issue-15 networks run on: RevUNet and U-Mamba_Bot through
OpenVINO (agreeing with PyTorch), U-Mamba_Enc falling back to PyTorch with the reason."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medpipe.errors import InputError
from medpipe.inference.sliding_window import predict
from medpipe.models import create_model
from medpipe.models.revunet import RevUNet

pytest.importorskip("openvino")
POOLS = [[2, 2, 2], [2, 2, 2], [1, 1, 1], [1, 1, 1], [1, 1, 1]]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDPIPE_CACHE", str(tmp_path / "cache"))


def _both(net, channels):
    vol = np.random.default_rng(0).normal(size=(channels, 24, 20, 16)).astype(np.float32)
    out = {}
    for backend in ("torch", "openvino"):
        r = predict(net.eval(), vol, (16, 16, 16), num_classes=3, backend=backend, precision="fp32",
                    output="probabilities", probability_dtype="fp32", progress=False)
        assert r.facts["backend"] == backend
        out[backend] = r.probabilities
    return out


@pytest.mark.slow  # two OpenVINO conversions (~25 s each on the 2-core machine)
def test_revunet_and_umamba_bot_run_on_openvino_like_on_torch():
    torch.manual_seed(0)
    rev = RevUNet(2, 3, widths=(8, 16, 16), depth=1)
    out = _both(rev, 2)
    np.testing.assert_allclose(out["openvino"], out["torch"], atol=1e-3)
    bot = create_model("umamba_bot_xs", in_channels=1, num_classes=3, pool_op_kernel_sizes=POOLS)
    out = _both(bot, 1)
    np.testing.assert_allclose(out["openvino"], out["torch"], atol=1e-3)


def test_umamba_enc_falls_back_to_torch_and_says_why():
    net = create_model("umamba_enc_xs", in_channels=1, num_classes=3, pool_op_kernel_sizes=POOLS,
                       patch_size=[16, 16, 16]).eval()
    vol = np.zeros((1, 16, 16, 16), np.float32)
    r = predict(net, vol, (16, 16, 16), num_classes=3, precision="fp32", progress=False)
    assert r.facts["backend"] == "torch" and "do not survive OpenVINO's conversion" in r.facts["backend_reason"]
    with pytest.raises(InputError, match="backend='openvino': U-Mamba_Enc"):
        predict(net, vol, (16, 16, 16), num_classes=3, precision="fp32", backend="openvino", progress=False)
