"""ParaTransCNN (Sun et al. 2024): a ResNet-34 branch and a pyramid ViT branch in parallel.

Built as the official code (HongkunSun/ParaTransCNN, ``model/ParaTransCNN.py``) builds it,
with its module and parameter *names*, so an official checkpoint loads with
``load_state_dict(strict=True)``:

* CNN branch ``firstconv/firstbn/firstrelu/encoder1..4``: ResNet-34's conv1 (stride 2),
  bn, relu and layer1..4, **without the max-pool**, so layer2..4 give 128/256/512 channels
  at 1/4, 1/8, 1/16 (layer1's 1/2 output only feeds layer2);
* transformer branch: patch embeddings ``patch_embed_1..3`` (convs k4s4, k2s2, k2s2) to
  320/640/1280 channels at 1/4, 1/8, 1/16, each followed by ``vit_1..3``: 3 pre-norm layers,
  8 heads, MLP 2x, qkv without bias, dropout 0.1, **no positional embedding** (so any input
  divisible by 16 works, not only 224x224);
* fusion at each scale: ``cat([vit, cnn])`` (1792/896/448 channels) -> squeeze-excitation
  ``SE_1..3`` (r 16, bias-free FCs); decoder ``decoder1..3`` = two 3x3 conv-BN-ReLU,
  transposed convs ``up3_1`` (x2), ``up2_1`` (x2), ``up1_1`` (x4), 1x1 head ``out``.

At 3 input channels, 9 classes: 245,468,937 parameters, the official count.

Why torchvision for the ResNet-34 branch (not timm or smp): it is the module the official
code uses (same ``BasicBlock``, same default init), it is already a core dependency (no
extra install for inference), and its parameter names are the ones ImageNet checkpoints
of torchvision *and* timm use (``conv1``, ``bn1``, ``layer1.0.conv1`` ...), so
``load_pretrained`` reads either. Nothing is downloaded: pretrained weights come from a
file the user gives (``--init-weights resnet34.pth``). The small sizes use the same
torchvision ``BasicBlock`` at narrower widths.

Grey input: the official code repeats a grey slice to 3 channels; with ``in_channels=1``
we instead sum a 3-channel pretrained ``conv1`` over its inputs (the same function of the
input, timm's ``adapt_input_conv``), so the first layer has 1/3 of the weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, resnet34

from medpipe.models.registry import register_model

__all__ = ["SEBlock", "DecoderBottleneckLayer", "TransformerModel", "ParaTransCNN", "paratranscnn",
           "paratranscnn_s", "paratranscnn_tiny", "RESNET34_LAYERS"]

RESNET34_LAYERS = (3, 4, 6, 3)


class SEBlock(nn.Module):
    """Squeeze-excitation (bias-free FCs, ratio ``r``): re-weights the concatenated channels."""

    def __init__(self, channel: int, r: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(channel, channel // r, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(channel // r, channel, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        return x * self.fc(self.avg_pool(x).view(b, c)).view(b, c, 1, 1)


class DecoderBottleneckLayer(nn.Module):
    """Two 3x3 conv-BN-ReLU at constant width (official names ``conv1/norm1/conv3/norm3``)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1)
        self.norm1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1)
        self.norm3 = nn.BatchNorm2d(in_channels)
        self.relu3 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu3(self.norm3(self.conv3(self.relu1(self.norm1(self.conv1(x))))))


class _SelfAttention(nn.Module):
    """Multi-head softmax attention over tokens; qkv without bias (official default)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"transformer width {dim} is not divisible by {heads} heads")
        self.num_heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.attn_drop = nn.Dropout(dropout)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        drop = self.attn_drop.p if self.training else 0.0
        x = nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=drop)  # scale head_dim**-0.5
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class _Residual(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x) + x


class _PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module, dropout: float | None = None):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        if dropout is not None:
            self.dropout = nn.Dropout(dropout)  # the official PreNormDrop (attention sub-layer)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fn(self.norm(x))
        return self.dropout(y) if hasattr(self, "dropout") else y


class _FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerModel(nn.Module):
    """``depth`` pre-norm layers (attention, MLP), residual each; ``net.{2i}``/``net.{2i+1}``."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_dim: int, dropout: float = 0.1):
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers.append(_Residual(_PreNorm(dim, _SelfAttention(dim, heads, dropout), dropout)))
            layers.append(_Residual(_PreNorm(dim, _FeedForward(dim, mlp_dim, dropout))))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _resnet_layer(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """torchvision's ``ResNet._make_layer`` for ``BasicBlock`` (1x1 conv + BN downsample)."""
    down = None
    if stride != 1 or inplanes != planes:
        down = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
    return nn.Sequential(BasicBlock(inplanes, planes, stride, down),
                         *[BasicBlock(planes, planes) for _ in range(blocks - 1)])


class ParaTransCNN(nn.Module):
    """ParaTransCNN with its official structure; ``cnn_widths``/``cnn_blocks`` other than
    ResNet-34's (64, 128, 256, 512)/(3, 4, 6, 3) give the small sizes."""

    spatial_dims = 2

    def __init__(self, in_channels: int = 3, num_classes: int = 9, *, dim: int = 320, depth: Sequence[int] = (3, 3, 3),
                 heads: int = 8, cnn_widths: Sequence[int] = (64, 128, 256, 512),
                 cnn_blocks: Sequence[int] = RESNET34_LAYERS, se_ratio: int = 16, dropout: float = 0.1):
        super().__init__()
        if len(depth) != 3 or len(cnn_widths) != 4 or len(cnn_blocks) != 4:
            raise ValueError("ParaTransCNN needs 3 transformer depths, 4 CNN widths and 4 CNN block counts")
        self.in_channels, self.num_classes, self.dim = in_channels, num_classes, dim
        self.input_shape_must_be_divisible_by = [16, 16]
        embed = [dim, 2 * dim, 4 * dim]
        w = list(cnn_widths)
        if w[3] != 2 * w[2]:  # the decoder's second stage takes [SE_2 (2d + w2), up (2d + w2)] = 4d + w3
            raise ValueError(f"ParaTransCNN's decoder needs cnn_widths[3] = 2 x cnn_widths[2], got {tuple(w)}")
        self.vit_1 = TransformerModel(embed[0], depth[0], heads, 2 * embed[0], dropout)
        self.vit_2 = TransformerModel(embed[1], depth[1], heads, 2 * embed[1], dropout)
        self.vit_3 = TransformerModel(embed[2], depth[2], heads, 2 * embed[2], dropout)
        self.patch_embed_1 = nn.Conv2d(in_channels, embed[0], kernel_size=4, stride=4)
        self.patch_embed_2 = nn.Conv2d(embed[0], embed[1], kernel_size=2, stride=2)
        self.patch_embed_3 = nn.Conv2d(embed[1], embed[2], kernel_size=2, stride=2)
        if tuple(w) == (64, 128, 256, 512) and tuple(cnn_blocks) == RESNET34_LAYERS:
            resnet = resnet34(weights=None)  # exactly the official branch
            if in_channels != 3:
                resnet.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.firstconv, self.firstbn, self.firstrelu = resnet.conv1, resnet.bn1, resnet.relu
            self.encoder1, self.encoder2, self.encoder3, self.encoder4 = (resnet.layer1, resnet.layer2,
                                                                          resnet.layer3, resnet.layer4)
        else:
            self.firstconv = nn.Conv2d(in_channels, w[0], kernel_size=7, stride=2, padding=3, bias=False)
            self.firstbn = nn.BatchNorm2d(w[0])
            self.firstrelu = nn.ReLU(inplace=True)
            self.encoder1 = _resnet_layer(w[0], w[0], cnn_blocks[0], 1)
            self.encoder2 = _resnet_layer(w[0], w[1], cnn_blocks[1], 2)
            self.encoder3 = _resnet_layer(w[1], w[2], cnn_blocks[2], 2)
            self.encoder4 = _resnet_layer(w[2], w[3], cnn_blocks[3], 2)
            for m in self.modules():  # torchvision ResNet's init
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        c16, c8, c4 = embed[2] + w[3], embed[1] + w[2], embed[0] + w[1]  # 1792, 896, 448 at full size
        self.SE_1 = SEBlock(c16, se_ratio)
        self.SE_2 = SEBlock(c8, se_ratio)
        self.SE_3 = SEBlock(c4, se_ratio)
        self.decoder1 = DecoderBottleneckLayer(c16)
        self.decoder2 = DecoderBottleneckLayer(2 * c8)
        self.decoder3 = DecoderBottleneckLayer(c4 + c8)
        self.up3_1 = nn.ConvTranspose2d(c16, c8, kernel_size=2, stride=2)
        self.up2_1 = nn.ConvTranspose2d(2 * c8, c8, kernel_size=2, stride=2)
        self.up1_1 = nn.ConvTranspose2d(c4 + c8, dim, kernel_size=4, stride=4)
        self.out = nn.Conv2d(dim, num_classes, kernel_size=1)

    @staticmethod
    def _tokens_to_map(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return x.view(x.shape[0], h, w, x.shape[-1]).permute(0, 3, 1, 2).contiguous()

    def _vit(self, x: torch.Tensor, embed: nn.Module, vit: nn.Module) -> torch.Tensor:
        x = embed(x)
        h, w = x.shape[-2:]
        return self._tokens_to_map(vit(x.flatten(2).transpose(1, 2)), h, w)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Full-resolution decoder features in front of the 1x1 ``head`` (``dim`` channels)."""
        _check_divisible(x, 16, "ParaTransCNN")
        e2 = self.encoder2(self.encoder1(self.firstrelu(self.firstbn(self.firstconv(x)))))
        e3 = self.encoder3(e2)
        e4 = self.encoder4(e3)
        v1 = self._vit(x, self.patch_embed_1, self.vit_1)
        v2 = self._vit(v1, self.patch_embed_2, self.vit_2)
        v3 = self._vit(v2, self.patch_embed_3, self.vit_3)
        y = self.up3_1(self.decoder1(self.SE_1(torch.cat([v3, e4], 1))))
        y = self.up2_1(self.decoder2(torch.cat([self.SE_2(torch.cat([v2, e3], 1)), y], 1)))
        return self.up1_1(self.decoder3(torch.cat([self.SE_3(torch.cat([v1, e2], 1)), y], 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.forward_features(x))

    @property
    def head(self) -> nn.Module:
        return self.out

    def load_pretrained(self, path: str | Path) -> dict[str, int]:
        """Load a ResNet ImageNet checkpoint (torchvision/timm names) into the CNN branch,
        or an official ParaTransCNN checkpoint into the whole network; returns counts.

        A 3-channel ``conv1`` for a 1-channel model is summed over its inputs (the same
        as feeding the grey slice three times, as the official code does)."""
        from medpipe.models.pretrained import read_state_dict

        state = read_state_dict(path)
        if any(k.startswith(("vit_1.", "encoder1.", "firstconv.")) for k in state):  # official checkpoint
            mapped = state
        else:
            rename = {"conv1.": "firstconv.", "bn1.": "firstbn.", "layer1.": "encoder1.", "layer2.": "encoder2.",
                      "layer3.": "encoder3.", "layer4.": "encoder4."}
            mapped = {}
            for key, value in state.items():
                for old, new in rename.items():
                    if key.startswith(old):
                        mapped[new + key[len(old):]] = value
        from medpipe.models.pretrained import load_matching

        loaded = load_matching(self, mapped, str(path))["loaded"]
        return {"loaded": loaded, "skipped": len(state) - loaded}


def _check_divisible(x: torch.Tensor, div: int, what: str) -> None:
    h, w = (int(s) for s in x.shape[-2:])
    if h % div or w % div:
        from medpipe.errors import InputError

        raise InputError(f"{what} needs inputs whose height and width are multiples of {div}, got {h}x{w}; "
                         f"pad or crop the image (the inference engine pads to the bundle's patch size)")


def _create(in_channels: int = 3, num_classes: int = 9, **cfg) -> ParaTransCNN:
    return ParaTransCNN(in_channels, num_classes, **cfg)


@register_model
def paratranscnn(**cfg) -> ParaTransCNN:
    """ParaTransCNN as published: ResNet-34 + 320/640/1280 ViT (245,468,937 params at 3 -> 9, 224^2)."""
    return _create(**cfg)


@register_model
def paratranscnn_s(**cfg) -> ParaTransCNN:
    """Small ParaTransCNN: ResNet-18 layout at 1/4 width, 32/64/128 ViT with 4 heads, 2 layers."""
    base = {"dim": 32, "depth": (2, 2, 2), "heads": 4, "cnn_widths": (16, 32, 64, 128), "cnn_blocks": (2, 2, 2, 2),
            "se_ratio": 8}
    return _create(**{**base, **cfg})


@register_model
def paratranscnn_tiny(**cfg) -> ParaTransCNN:
    """Tiny ParaTransCNN for tests and the CPU bundle: 8..64-wide CNN, 16/32/64 ViT, 1 layer each."""
    base = {"dim": 16, "depth": (1, 1, 1), "heads": 2, "cnn_widths": (8, 16, 32, 64), "cnn_blocks": (1, 1, 1, 1),
            "se_ratio": 4}
    return _create(**{**base, **cfg})
