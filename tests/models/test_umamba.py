"""U-Mamba as the official code builds it: counts, block halving, official key names (aliases
included), channel tokens, 2D specifics, fp32 Mamba, and equality with mamba_ssm where it runs."""

from __future__ import annotations

import pytest
import torch

from medpipe.errors import BundleError
from medpipe.models import count_parameters, create_model
from medpipe.models.umamba import ConvNormAct, MambaLayer, UMamba, halved_block_counts

BRATS = dict(in_channels=4, num_classes=4)


def _meta(name, **kw):
    with torch.device("meta"):
        return create_model(name, **BRATS, **kw)


def test_parameter_counts_of_the_3d_brats_plan():
    assert count_parameters(_meta("umamba_bot")) == 42_124_692
    assert count_parameters(_meta("umamba_enc", patch_size=[128, 128, 128])) == 42_755_220
    with torch.device("meta"):
        layer = MambaLayer(320)
    m = layer.mamba
    parts = {"in_proj": m.in_proj, "conv": m.conv1d, "x_proj": m.x_proj, "dt_proj": m.dt_proj, "out_proj": m.out_proj,
             "LN": layer.norm}
    counts = {k: count_parameters(v) for k, v in parts.items()} | {"A_log": m.A_log.numel(), "D": m.D.numel()}
    assert counts == {"in_proj": 409_600, "conv": 3_200, "x_proj": 33_280, "dt_proj": 13_440, "out_proj": 204_800,
                      "LN": 640, "A_log": 10_240, "D": 640}
    assert count_parameters(layer) == 675_840


def test_official_block_halving():
    assert halved_block_counts([2] * 6, [2] * 5) == ([2, 2, 2, 1, 1, 1], [2, 2, 2, 1, 1])
    net = _meta("umamba_bot")
    assert net.n_blocks_per_stage == [2, 2, 2, 1, 1, 1]
    assert len(net.encoder.stages[2]) == 2 and len(net.encoder.stages[3]) == 1
    assert len(net.decoder.stages[2]) == 2 and len(net.decoder.stages[3]) == 1


OFFICIAL_BOT = {  # written out from UMambaBot_3d.py's constructor for the BraTS plan
    "encoder.stem.0.conv1.weight": (32, 4, 3, 3, 3),
    "encoder.stem.0.conv3.weight": (32, 4, 1, 1, 1),
    "encoder.stem.1.conv1.conv.weight": (32, 32, 3, 3, 3),
    "encoder.stem.1.conv1.norm.weight": (32,),
    "encoder.stem.1.conv2.conv.bias": (32,),
    "encoder.stages.0.0.conv3.weight": (32, 32, 1, 1, 1),
    "encoder.stages.1.0.conv1.weight": (64, 32, 3, 3, 3),
    "encoder.stages.2.1.conv2.norm.bias": (128,),
    "encoder.stages.5.0.norm2.weight": (320,),
    "mamba_layer.norm.weight": (320,),
    "mamba_layer.mamba.in_proj.weight": (1280, 320),
    "mamba_layer.mamba.conv1d.weight": (640, 1, 4),
    "mamba_layer.mamba.x_proj.weight": (52, 640),
    "mamba_layer.mamba.dt_proj.bias": (640,),
    "mamba_layer.mamba.A_log": (640, 16),
    "mamba_layer.mamba.D": (640,),
    "mamba_layer.mamba.out_proj.weight": (320, 640),
    "decoder.upsample_layers.0.conv.weight": (320, 320, 1, 1, 1),
    "decoder.stages.0.0.conv1.weight": (320, 640, 3, 3, 3),
    "decoder.stages.0.1.conv1.conv.weight": (320, 320, 3, 3, 3),
    "decoder.stages.4.0.conv3.weight": (32, 64, 1, 1, 1),
    "decoder.seg_layers.4.weight": (4, 32, 1, 1, 1),
}


def test_official_key_names_and_shapes():
    ours = {k: tuple(v.shape) for k, v in _meta("umamba_bot").state_dict().items()}
    for key, shape in OFFICIAL_BOT.items():
        assert ours.get(key) == shape, key
    assert "decoder.stages.3.1.conv1.conv.weight" not in ours  # halved
    enc = {k: tuple(v.shape) for k, v in _meta("umamba_enc", patch_size=[128] * 3).state_dict().items()}
    assert enc["encoder.mamba_layers.0.mamba.in_proj.weight"] == (128, 32)
    assert enc["encoder.mamba_layers.5.norm.weight"] == (64,)  # 4^3 voxels <= 320 channels: channel tokens


def _official_form(net: UMamba) -> dict[str, torch.Tensor]:
    """Our state dict with the official code's alias keys added (decoder.encoder.*, all_modules.N)."""
    state = dict(net.state_dict())
    for name, m in net.named_modules():
        if isinstance(m, ConvNormAct):
            for i, part in enumerate(("conv", "norm")):
                for p in ("weight", "bias"):
                    if f"{name}.{part}.{p}" in state:
                        state[f"{name}.all_modules.{i}.{p}"] = state[f"{name}.{part}.{p}"]
    state.update({f"decoder.{k}": v for k, v in list(state.items()) if k.startswith("encoder.")})
    return state


def test_an_official_style_checkpoint_loads_strictly():
    torch.manual_seed(0)
    src = create_model("umamba_bot_xs", in_channels=2, num_classes=3)
    official = _official_form(src)
    assert any(".all_modules.1." in k for k in official) and any(k.startswith("decoder.encoder.") for k in official)
    dst = create_model("umamba_bot_xs", in_channels=2, num_classes=3)
    dst.load_state_dict(official, strict=True)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    bad = dict(official)
    key = next(k for k in bad if k.startswith("decoder.encoder.") and k.endswith("weight"))
    bad[key] = bad[key] + 1
    with pytest.raises(BundleError, match="holds other values"):
        dst.load_state_dict(bad, strict=True)


def test_2d_variants_alternate_mamba_layers_and_drop_the_last_skip():
    enc = _meta("umamba_enc_2d")  # 7 stages: layers where (s % 2) xor (7 % 2) -> s = 0, 2, 4, 6
    kinds = [type(m).__name__ for m in enc.encoder.mamba_layers]
    assert kinds == ["MambaLayer", "Identity", "MambaLayer", "Identity", "MambaLayer", "Identity", "MambaLayer"]
    bot = _meta("umamba_bot_2d")
    assert bot.decoder.stages[-1][0].conv1.in_channels == 32  # no concat with stage 0's output
    assert bot.decoder.stages[-2][0].conv1.in_channels == 2 * 64


def test_tiny_forward_deep_supervision_and_fp32_mamba_under_autocast():
    torch.manual_seed(0)
    net = create_model("umamba_bot_xs", in_channels=2, num_classes=3, deep_supervision=True,
                       pool_op_kernel_sizes=[[2, 2, 2], [2, 2, 2], [2, 2, 1], [2, 2, 1], [2, 2, 1]])
    x = torch.randn(1, 2, 64, 64, 16)
    outs = net.train()(x)
    assert [tuple(o.shape) for o in outs[:3]] == [(1, 3, 64, 64, 16), (1, 3, 32, 32, 8), (1, 3, 16, 16, 4)]
    seen = {}
    def record(module, inputs, output):
        seen["dtype"] = output.dtype

    net.mamba_layer.mamba.register_forward_hook(record)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net.eval()(x)
    assert seen["dtype"] == torch.float32
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net.head(net.forward_features(x)), net(x))


def test_enc_refuses_another_patch_size_on_channel_token_stages():
    net = create_model("umamba_enc_xs", in_channels=1, num_classes=2, patch_size=[64, 64, 32]).eval()
    layers = net.encoder.mamba_layers
    assert [m.channel_token for m in layers] == [False, False, False, False, True, True]
    assert (layers[4].dim, layers[5].dim) == (32, 4)  # 4x4x2 and 2x2x1 voxels
    with torch.no_grad():
        assert net(torch.randn(1, 1, 64, 64, 32)).shape == (1, 2, 64, 64, 32)
        with pytest.raises(ValueError, match="built for 32 voxels"):
            net(torch.randn(1, 1, 64, 64, 64))


def test_our_mamba_equals_mamba_ssm_where_it_runs():
    if not torch.cuda.is_available():
        pytest.skip("mamba_ssm needs CUDA")
    mamba_ssm = pytest.importorskip("mamba_ssm")
    from medpipe.models.mamba import Mamba

    torch.manual_seed(0)
    ours = Mamba(64).cuda()
    theirs = mamba_ssm.Mamba(d_model=64, d_state=16, d_conv=4, expand=2).cuda()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 300, 64, device="cuda", requires_grad=True)
    y_ours, y_theirs = ours(x), theirs(x)
    torch.testing.assert_close(y_ours, y_theirs, atol=1e-4, rtol=1e-3)
    g1 = torch.autograd.grad(y_ours.square().sum(), x)[0]
    g2 = torch.autograd.grad(theirs(x).square().sum(), x)[0]
    torch.testing.assert_close(g1, g2, atol=1e-3, rtol=1e-3)
