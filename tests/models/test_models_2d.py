"""ParaTransCNN and TransDAE: official counts and names, heads, pretrained loading, sizes."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import resnet34

from medpipe.errors import InputError
from medpipe.models import count_parameters, create_model, model_info
from medpipe.models.pretrained import load_pretrained


def test_paratranscnn_official_parameter_count():
    assert model_info("paratranscnn", in_channels=3, num_classes=9).params == 245_468_937
    assert model_info("paratranscnn", in_channels=3, num_classes=9).dims == 2


def _official_paratranscnn_shapes(c=3, k=9, d=320):
    """Names/shapes of the official ParaTransCNN state_dict outside the ResNet branch,
    written out from its constructor (model/ParaTransCNN.py, model/transformer.py)."""
    out = {}
    for i, e in enumerate((d, 2 * d, 4 * d), 1):
        for layer in range(3):
            a, f = f"vit_{i}.net.{2 * layer}.fn", f"vit_{i}.net.{2 * layer + 1}.fn"
            out |= {f"{a}.norm.weight": (e,), f"{a}.norm.bias": (e,), f"{a}.fn.qkv.weight": (3 * e, e),
                    f"{a}.fn.proj.weight": (e, e), f"{a}.fn.proj.bias": (e,), f"{f}.norm.weight": (e,),
                    f"{f}.norm.bias": (e,), f"{f}.fn.net.0.weight": (2 * e, e), f"{f}.fn.net.0.bias": (2 * e,),
                    f"{f}.fn.net.3.weight": (e, 2 * e), f"{f}.fn.net.3.bias": (e,)}
    for i, (cin, cout, ks) in enumerate(((c, d, 4), (d, 2 * d, 2), (2 * d, 4 * d, 2)), 1):
        out |= {f"patch_embed_{i}.weight": (cout, cin, ks, ks), f"patch_embed_{i}.bias": (cout,)}
    for i, ch in enumerate((4 * d + 512, 2 * d + 256, d + 128), 1):
        out |= {f"SE_{i}.fc.0.weight": (ch // 16, ch), f"SE_{i}.fc.2.weight": (ch, ch // 16)}
    for i, ch in enumerate((4 * d + 512, 4 * d + 512, d + 128 + 2 * d + 256), 1):
        for conv, norm in (("conv1", "norm1"), ("conv3", "norm3")):
            out |= {f"decoder{i}.{conv}.weight": (ch, ch, 3, 3), f"decoder{i}.{conv}.bias": (ch,)}
            out |= {f"decoder{i}.{norm}.{p}": (ch,) for p in ("weight", "bias", "running_mean", "running_var")}
            out[f"decoder{i}.{norm}.num_batches_tracked"] = ()
    for name, cin, cout, ks in (("up3_1", 4 * d + 512, 2 * d + 256, 2), ("up2_1", 4 * d + 512, 2 * d + 256, 2),
                                ("up1_1", d + 128 + 2 * d + 256, d, 4)):
        out |= {f"{name}.weight": (cin, cout, ks, ks), f"{name}.bias": (cout,)}
    out |= {"out.weight": (k, d, 1, 1), "out.bias": (k,)}
    return out


def test_paratranscnn_state_dict_names_are_the_official_ones():
    with torch.device("meta"):
        net = create_model("paratranscnn", in_channels=3, num_classes=9)
        ref = resnet34(weights=None)
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    rename = {"conv1.": "firstconv.", "bn1.": "firstbn.", **{f"layer{i}.": f"encoder{i}." for i in range(1, 5)}}
    cnn = {}
    for key, v in ref.state_dict().items():
        for old, new in rename.items():
            if key.startswith(old):
                cnn[new + key[len(old):]] = tuple(v.shape)
    assert sum(v.numel() for k, v in ref.state_dict().items() if not k.startswith("fc.") and "running" not in k
               and "num_batches" not in k) == 21_284_672
    assert ours == {**_official_paratranscnn_shapes(), **cnn}


def test_paratranscnn_head_any_size_and_bad_size():
    torch.manual_seed(0)
    net = create_model("paratranscnn_tiny", in_channels=1, num_classes=3).eval()
    x = torch.randn(2, 1, 48, 80)
    with torch.no_grad():
        y = net(x)
        assert y.shape == (2, 3, 48, 80)
        assert torch.allclose(net.head(net.forward_features(x)), y, atol=1e-6)
        with pytest.raises(InputError, match="multiples of 16, got 40x80"):
            net(torch.randn(1, 1, 40, 80))


def test_paratranscnn_loads_a_resnet34_checkpoint_for_grey_input(tmp_path):
    torch.manual_seed(1)
    ref = resnet34(weights=None)
    torch.save(ref.state_dict(), tmp_path / "resnet34.pth")
    net = create_model("paratranscnn", in_channels=1, num_classes=9)
    report = load_pretrained(net, tmp_path / "resnet34.pth")
    assert report == {"loaded": len(ref.state_dict()) - 2, "skipped": 2}  # fc.weight, fc.bias
    assert torch.equal(net.firstconv.weight, ref.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(net.encoder4[2].conv2.weight, ref.layer4[2].conv2.weight)
    # grey input through the summed conv == the grey slice repeated to RGB through the original
    x = torch.randn(1, 1, 32, 32)
    assert torch.allclose(net.firstconv(x), ref.conv1(x.repeat(1, 3, 1, 1)), atol=1e-5)


def test_pretrained_errors_name_the_file(tmp_path):
    net = create_model("transdae_tiny", in_channels=1, num_classes=2)
    with pytest.raises(InputError, match="missing.pth do not exist"):
        load_pretrained(net, tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="junk.pth could not be read"):
        load_pretrained(net, tmp_path / "junk.pth")
    torch.save({"state_dict": {"foo.weight": torch.zeros(3)}}, tmp_path / "other.pth")
    with pytest.raises(InputError, match="share no tensor"):
        load_pretrained(net, tmp_path / "other.pth")


def _daeformer_encoder_names(dims=(128, 320, 512), layers=(2, 2, 2)):
    """DAE-Former's MiT state_dict names (networks/DAEFormer.py), without the two LayerNorms
    of each MixFFN_skip that its forward never uses (``norm2``, ``norm3``)."""
    out = set()
    for i in range(1, len(dims) + 1):
        out |= {f"backbone.patch_embed{i}.{m}.{p}" for m in ("proj", "norm") for p in ("weight", "bias")}
        out |= {f"backbone.norm{i}.weight", f"backbone.norm{i}.bias"}
        for j in range(layers[i - 1]):
            b = f"backbone.block{i}.{j}"
            out |= {f"{b}.norm{n}.{p}" for n in range(1, 5) for p in ("weight", "bias")}
            out |= {f"{b}.attn.{m}.{p}" for m in ("keys", "queries", "values", "reprojection") for p in ("weight", "bias")}
            out |= {f"{b}.channel_attn.temperature", f"{b}.channel_attn.qkv.weight", f"{b}.channel_attn.proj.weight",
                    f"{b}.channel_attn.proj.bias"}
            for mlp in ("mlp1", "mlp2"):
                out |= {f"{b}.{mlp}.{m}.{p}" for m in ("fc1", "fc2", "dwconv.dwconv", "norm1") for p in ("weight", "bias")}
    return out


def test_transdae_encoder_is_daeformers_and_count():
    with torch.device("meta"):
        net = create_model("transdae", in_channels=3, num_classes=9)
    assert count_parameters(net) == 30_471_001
    assert count_parameters(net.backbone) == 20_379_888
    assert {k for k in net.state_dict() if k.startswith("backbone.")} == _daeformer_encoder_names()
    # decoder names that DAE-Former's decoder layers share with ours
    keys = set(net.state_dict())
    assert {"decoder_2.layer_up.expand.weight", "decoder_1.x1_linear.weight", "decoder_1.concat_linear.weight",
            "decoder_0.layer_former_2.channel_attn.qkv.weight", "decoder_0.layer_up.expand.weight",
            "decoder_0.last_layer.weight"} <= keys
    assert net.state_dict()["decoder_0.layer_up.expand.weight"].shape == (16 * 128, 128)


def test_transdae_features_head_and_attention_invariants():
    torch.manual_seed(0)
    net = create_model("transdae_tiny", in_channels=2, num_classes=4).eval()
    x = torch.randn(1, 2, 64, 32)
    with torch.no_grad():
        y = net(x)
        assert y.shape == (1, 4, 64, 32)
        assert torch.allclose(net.head(net.forward_features(x)), y, atol=1e-6)
        # efficient attention's context is a convex combination of values: constant values stay constant
        ea = net.backbone.block1[0].attn
        inp = torch.randn(1, 16, 8, 8)
        with torch.no_grad():
            ea.values.weight.zero_()
            ea.values.bias.fill_(0.7)
            ea.reprojection.weight.copy_(torch.eye(16)[:, :, None, None])
            ea.reprojection.bias.zero_()
        assert torch.allclose(ea(inp), torch.full((1, 16, 8, 8), 0.7), atol=1e-6)
        with pytest.raises(InputError, match="multiples of 16"):
            net(torch.randn(1, 2, 24, 32))
