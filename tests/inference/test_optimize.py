"""Inference rewrites keep the maths: same outputs, same parameters, no copies."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medpipe.inference.optimize import (
    FusedInstanceNormLeakyReLU,
    OneDNNConv3d,
    PointwiseConv3d,
    optimize_for_inference,
)
from medpipe.models import create_model


@pytest.mark.parametrize("channels_last", [False, True])
def test_stunet_outputs_unchanged_and_parameters_shared(channels_last):
    torch.manual_seed(0)
    net = create_model("stunet_xs", in_channels=2, num_classes=5,
                       pool_op_kernel_sizes=[[2, 2, 2], [2, 2, 2], [2, 2, 1], [1, 1, 1], [1, 1, 1]]).eval()
    x = torch.randn(2, 2, 16, 24, 12)
    fast = optimize_for_inference(net)
    if channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    kinds = [type(m) for m in fast.modules()]
    # 6 encoder + 5 decoder shortcuts, 5 upsampling convs, 5 heads
    assert kinds.count(PointwiseConv3d) == 21
    assert kinds.count(OneDNNConv3d) == 22  # two 3x3x3 convs per block, 11 blocks
    assert kinds.count(FusedInstanceNormLeakyReLU) == 11  # norm1/act1 of every block
    assert {id(p) for p in fast.parameters()} <= {id(p) for p in net.parameters()}
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), net(x), atol=2e-5, rtol=1e-4)
    assert not any(isinstance(m, PointwiseConv3d) for m in net.modules())  # the original is untouched


def test_strided_pointwise_conv_equals_conv3d():
    torch.manual_seed(1)
    conv = nn.Conv3d(3, 4, 1, stride=(2, 1, 2))
    x = torch.randn(1, 3, 7, 5, 9)
    with torch.no_grad():
        torch.testing.assert_close(PointwiseConv3d(conv)(x), conv(x), atol=1e-6, rtol=1e-5)
        xcl = x.contiguous(memory_format=torch.channels_last_3d)
        torch.testing.assert_close(PointwiseConv3d(conv)(xcl), conv(xcl), atol=1e-6, rtol=1e-5)


def test_rewritten_network_under_bf16_autocast_stays_close():
    torch.manual_seed(2)
    net = create_model("stunet_xs", in_channels=1, num_classes=3,
                       pool_op_kernel_sizes=[[2, 2, 2]] * 3 + [[1, 1, 1]] * 2).eval()
    fast = optimize_for_inference(net)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = net(x).float(), fast(x).float()
    assert a.dtype == b.dtype
    assert (a - b).abs().max() < 0.1 * a.abs().max()  # both bf16: same maths, different rounding order


def test_strided_padded_conv_equals_conv3d():
    torch.manual_seed(3)
    conv = nn.Conv3d(1, 4, 3, stride=2, padding=1)
    x = torch.randn(2, 1, 9, 8, 7)
    with torch.no_grad():
        torch.testing.assert_close(OneDNNConv3d(conv)(x), conv(x), atol=1e-5, rtol=1e-5)
