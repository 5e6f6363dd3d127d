"""STU-Net as published: parameter counts, official state-dict names, blocks, outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medpipe.models import count_parameters, create_model
from medpipe.models.stunet import BasicResBlock, STUNet

# Published counts (1 input channel, 105 TotalSegmentator classes, five 2x2x2 pools).
PUBLISHED_M = {"stunet_s": 14.60, "stunet_b": 58.26, "stunet_l": 440.30, "stunet_h": 1457.33}


@pytest.mark.parametrize("name", sorted(PUBLISHED_M))
def test_published_parameter_counts_on_meta(name):
    with torch.device("meta"):  # H is 5.8 GB in fp32: never allocate it
        net = create_model(name, in_channels=1, num_classes=105)
    assert all(p.is_meta for p in net.parameters())
    assert round(count_parameters(net) / 1e6, 2) == PUBLISHED_M[name]


def official_state_shapes(in_ch, n_cls, dims, depth, k=3):
    """Names and shapes the official ``STUNet`` (uni-medical/STU-Net,
    nnunet/network_architecture/STUNet.py) puts in its state_dict, written out from its
    constructor independently of our implementation."""
    out = {}

    def block(prefix, i, o, shortcut):
        out[f"{prefix}.conv1.weight"], out[f"{prefix}.conv1.bias"] = (o, i, k, k, k), (o,)
        out[f"{prefix}.norm1.weight"], out[f"{prefix}.norm1.bias"] = (o,), (o,)
        out[f"{prefix}.conv2.weight"], out[f"{prefix}.conv2.bias"] = (o, o, k, k, k), (o,)
        out[f"{prefix}.norm2.weight"], out[f"{prefix}.norm2.bias"] = (o,), (o,)
        if shortcut:
            out[f"{prefix}.conv3.weight"], out[f"{prefix}.conv3.bias"] = (o, i, 1, 1, 1), (o,)

    for d in range(len(dims)):
        block(f"conv_blocks_context.{d}.0", in_ch if d == 0 else dims[d - 1], dims[d], True)
        for b in range(1, depth):
            block(f"conv_blocks_context.{d}.{b}", dims[d], dims[d], False)
    for u in range(len(dims) - 1):
        hi, lo = dims[-1 - u], dims[-2 - u]
        out[f"upsample_layers.{u}.conv.weight"], out[f"upsample_layers.{u}.conv.bias"] = (lo, hi, 1, 1, 1), (lo,)
        block(f"conv_blocks_localization.{u}.0", 2 * lo, lo, True)
        for b in range(1, depth):
            block(f"conv_blocks_localization.{u}.{b}", lo, lo, False)
        out[f"seg_outputs.{u}.weight"], out[f"seg_outputs.{u}.bias"] = (n_cls, lo, 1, 1, 1), (n_cls,)
    return out


def test_exact_official_key_names_and_shapes():
    with torch.device("meta"):
        net = create_model("stunet_s", in_channels=1, num_classes=105)
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    for key, shape in {
        "conv_blocks_context.0.0.conv1.weight": (16, 1, 3, 3, 3),
        "conv_blocks_context.0.0.conv3.weight": (16, 1, 1, 1, 1),
        "conv_blocks_context.5.0.conv2.weight": (256, 256, 3, 3, 3),
        "upsample_layers.0.conv.weight": (256, 256, 1, 1, 1),
        "conv_blocks_localization.0.0.conv1.weight": (256, 512, 3, 3, 3),
        "conv_blocks_localization.4.0.norm2.bias": (16,),
        "seg_outputs.4.weight": (105, 16, 1, 1, 1),
        "seg_outputs.4.bias": (105,),
    }.items():
        assert ours[key] == shape, key
    assert ours == official_state_shapes(1, 105, (16, 32, 64, 128, 256, 256), 1)


@pytest.mark.parametrize(("dims", "depth"), [((8, 16, 32, 64, 64, 64), 1), ((4, 8, 8, 16, 16, 16), 2)])
def test_official_state_dict_loads_strictly(dims, depth):
    """An official-format checkpoint (random tensors under official names) loads with strict=True."""
    official = {k: torch.randn(s) for k, s in official_state_shapes(2, 5, dims, depth).items()}
    ckpt = {"network_weights": official}  # nnU-Net v2 checkpoint layout
    net = STUNet(2, 5, widths=dims, depth=[depth] * 6)
    net.load_state_dict(ckpt["network_weights"], strict=True)
    assert torch.equal(net.conv_blocks_context[0][0].conv1.weight, official["conv_blocks_context.0.0.conv1.weight"])


def test_blocks_follow_the_paper():
    with torch.device("meta"):
        net = create_model("stunet_l", in_channels=1, num_classes=3)  # L: 2 blocks per stage
    for stage_list in (net.conv_blocks_context, net.conv_blocks_localization):
        for stage in stage_list:
            assert isinstance(stage[0].conv3, nn.Conv3d) and stage[0].conv3.kernel_size == (1, 1, 1)
            assert all(b.conv3 is None for b in stage[1:])
    assert net.conv_blocks_context[0][0].conv1.stride == (1, 1, 1)  # stage 0 is not strided
    assert all(s[0].conv1.stride == (2, 2, 2) for s in net.conv_blocks_context[1:])
    assert not any(isinstance(m, (nn.ConvTranspose3d, nn.ConvTranspose2d)) for m in net.modules())
    assert all(up.conv.kernel_size == (1, 1, 1) for up in net.upsample_layers)


def test_residual_block_computes_conv_in_lrelu_plus_shortcut():
    torch.manual_seed(0)
    blk = BasicResBlock(3, 4, [3, 3, 3], stride=2, use_1x1conv=True).eval()
    x = torch.randn(1, 3, 8, 8, 8)
    f = torch.nn.functional
    y = f.leaky_relu(f.instance_norm(blk.conv1(x), weight=blk.norm1.weight, bias=blk.norm1.bias), 0.01)
    y = f.instance_norm(blk.conv2(y), weight=blk.norm2.weight, bias=blk.norm2.bias)
    expected = f.leaky_relu(y + blk.conv3(x), 0.01)
    torch.testing.assert_close(blk(x), expected)
    assert blk(x).shape == (1, 4, 4, 4, 4)


def test_deep_supervision_only_in_training():
    net = create_model("stunet_xs", in_channels=1, num_classes=3, deep_supervision=True,
                       pool_op_kernel_sizes=[[2, 2, 1]] + [[2, 2, 2]] * 4)
    x = torch.randn(1, 1, 64, 64, 32)
    outs = net.train()(x)
    assert isinstance(outs, list)
    assert [tuple(o.shape[2:]) for o in outs] == [(64, 64, 32), (32, 32, 32), (16, 16, 16), (8, 8, 8), (4, 4, 4)]
    with torch.no_grad():
        y = net.eval()(x)
    assert isinstance(y, torch.Tensor) and y.shape == (1, 3, 64, 64, 32)
    assert net.input_shape_must_be_divisible_by == [32, 32, 16]


def test_forward_features_and_head_compose_to_forward():
    net = create_model("stunet_xs", in_channels=1, num_classes=7, deep_supervision=True).eval()
    x = torch.randn(1, 1, 32, 32, 64)
    with torch.no_grad():
        feats = net.forward_features(x)
        assert feats.shape == (1, 8, 32, 32, 64)  # widths[0] channels at full resolution
        torch.testing.assert_close(net.head(feats), net(x))
    assert net.head is net.seg_outputs[-1] and net.head.kernel_size == (1, 1, 1)


def test_2d_variant():
    net = STUNet(3, 4, widths=(8, 16, 32), depth=[1, 1, 1], spatial_dims=2).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 32, 48)).shape == (2, 4, 32, 48)
    assert isinstance(net.seg_outputs[0], nn.Conv2d)


def test_channels_last_and_bf16_autocast_match_fp32():
    torch.manual_seed(0)
    net = create_model("stunet_xs", in_channels=1, num_classes=3).eval()
    x = torch.randn(1, 1, 64, 32, 32)
    with torch.no_grad():
        ref = net(x)
        net_cl = net.to(memory_format=torch.channels_last_3d)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = net_cl(x.to(memory_format=torch.channels_last_3d))
    assert y.dtype == torch.bfloat16 and y.shape == ref.shape
    assert (y.float().argmax(1) == ref.argmax(1)).float().mean() > 0.9
    assert (y.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_bad_plans_are_refused():
    with pytest.raises(ValueError, match="needs 5 pool_op_kernel_sizes"):
        create_model("stunet_xs", pool_op_kernel_sizes=[[2, 2, 2]] * 4)
    with pytest.raises(ValueError, match="must have 3 entries"):
        create_model("stunet_xs", conv_kernel_sizes=[[3, 3]] * 6)
