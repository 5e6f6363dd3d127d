"""nnU-Net v2's two standard networks, ``PlainConvUNet`` and ``ResidualEncoderUNet``.

Most trained segmentation models in hospitals and papers (TotalSegmentator's among them)
are nnU-Net v2 results folders built from these two classes of nnU-Net's
``dynamic_network_architectures`` package. We write them again, in our registry's style,
for two reasons: medpipe must not depend on nnU-Net's training stack to run a model, and
the importer must be able to check a checkpoint against the architecture before any
study is touched (built on the ``meta`` device). Module and parameter names are
nnU-Net's, so an official ``network_weights`` state dict loads with ``strict=True``:

* ``encoder.stages.{s}.0.convs.{i}.conv`` / ``.norm`` / ``.all_modules.{k}`` (plain) and
  ``encoder.stem`` + ``encoder.stages.{s}.blocks.{b}.conv1/conv2/skip`` (residual, ResNet-D
  blocks: avg-pool + 1x1 conv on the skip);
* ``decoder.transpconvs.{s}``, ``decoder.stages.{s}.convs.{i}``, ``decoder.seg_layers.{s}``;
* the aliases nnU-Net's state dicts carry: every conv/norm also appears under
  ``all_modules.{k}``, and the whole encoder again under ``decoder.encoder`` (a
  5-stage plain U-Net lists 240 keys for 88 tensors). Bundles store each tensor once
  (see ``bundle.py``); the aliases are restored on load.

``forward_features`` + ``head`` follow the timm convention the inference engine uses to
stitch decoder features instead of many-class logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from medpipe.models.registry import register_model

__all__ = ["PlainConvUNet", "ResidualEncoderUNet", "nnunet_plain_unet", "nnunet_resenc_unet"]

NormKind = Literal["instance", "batch"]
_NONLIN = {"leaky_relu": nn.LeakyReLU, "relu": nn.ReLU, "gelu": nn.GELU, "prelu": nn.PReLU, "elu": nn.ELU}


# ----------------------------------------------------------------------------- blocks
def _ops(dims: int) -> tuple[type[nn.Module], type[nn.Module], dict[str, type[nn.Module]], type[nn.Module]]:
    if dims not in (2, 3):
        raise ValueError(f"nnU-Net networks are 2D or 3D, got {dims} spatial dims")
    conv = nn.Conv3d if dims == 3 else nn.Conv2d
    tconv = nn.ConvTranspose3d if dims == 3 else nn.ConvTranspose2d
    norms = {"instance": nn.InstanceNorm3d if dims == 3 else nn.InstanceNorm2d,
             "batch": nn.BatchNorm3d if dims == 3 else nn.BatchNorm2d}
    pool = nn.AvgPool3d if dims == 3 else nn.AvgPool2d
    return conv, tconv, norms, pool


class _Settings:
    """The per-network layer settings every block shares (nnU-Net's conv/norm/nonlin kwargs)."""

    def __init__(self, dims: int, conv_bias: bool, norm: NormKind | None, norm_eps: float, norm_affine: bool,
                 dropout_p: float, nonlin: str | None, negative_slope: float, nonlin_first: bool) -> None:
        self.dims = dims
        self.conv, self.tconv, norms, self.pool = _ops(dims)
        if norm is not None and norm not in norms:
            raise ValueError(f"norm must be 'instance', 'batch' or None, got {norm!r}")
        if nonlin is not None and nonlin not in _NONLIN:
            raise ValueError(f"nonlin must be one of {sorted(_NONLIN)} or None, got {nonlin!r}")
        self.norm_cls = norms[norm] if norm is not None else None
        self.conv_bias, self.norm_eps, self.norm_affine = conv_bias, norm_eps, norm_affine
        self.dropout_p, self.nonlin, self.negative_slope, self.nonlin_first = dropout_p, nonlin, negative_slope, nonlin_first

    def make_nonlin(self) -> nn.Module | None:
        if self.nonlin is None:
            return None
        if self.nonlin == "leaky_relu":
            return nn.LeakyReLU(self.negative_slope, inplace=True)
        if self.nonlin in ("relu", "elu"):
            return _NONLIN[self.nonlin](inplace=True)
        return _NONLIN[self.nonlin]()


class ConvDropoutNormReLU(nn.Module):
    """conv → [dropout] → [norm] → [nonlin] (norm and nonlin swapped with ``nonlin_first``)."""

    def __init__(self, s: _Settings, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int], *,
                 bias: bool | None = None, dropout: bool = True, norm: bool = True, nonlin: bool = True) -> None:
        super().__init__()
        kernel = list(kernel)
        self.conv = s.conv(cin, cout, kernel, list(stride), padding=[(k - 1) // 2 for k in kernel], dilation=1,
                           bias=s.conv_bias if bias is None else bias)
        ops: list[nn.Module] = [self.conv]
        if dropout and s.dropout_p > 0:
            self.dropout = nn.Dropout3d(s.dropout_p) if s.dims == 3 else nn.Dropout2d(s.dropout_p)
            ops.append(self.dropout)
        if norm and s.norm_cls is not None:
            self.norm = s.norm_cls(cout, eps=s.norm_eps, affine=s.norm_affine)
            ops.append(self.norm)
        act = s.make_nonlin() if nonlin else None
        if act is not None:
            self.nonlin = act
            ops.append(act)
        if s.nonlin_first and norm and s.norm_cls is not None and act is not None:
            ops[-1], ops[-2] = ops[-2], ops[-1]
        self.all_modules = nn.Sequential(*ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.all_modules(x)


class StackedConvBlocks(nn.Module):
    """``n`` ConvDropoutNormReLU layers; the first carries the stride."""

    def __init__(self, s: _Settings, n: int, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int]) -> None:
        super().__init__()
        ones = [1] * s.dims
        self.convs = nn.Sequential(*[ConvDropoutNormReLU(s, cin if i == 0 else cout, cout, kernel,
                                                         stride if i == 0 else ones) for i in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


class BasicBlockD(nn.Module):
    """ResNet-D basic block: conv1 (stride, nonlin) → conv2 (no nonlin) + skip → nonlin.
    The skip average-pools when strided and projects with a bias-free 1x1 conv + norm."""

    def __init__(self, s: _Settings, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int]) -> None:
        super().__init__()
        ones = [1] * s.dims
        self.conv1 = ConvDropoutNormReLU(s, cin, cout, kernel, stride)
        self.conv2 = ConvDropoutNormReLU(s, cout, cout, kernel, ones, dropout=False, nonlin=False)
        self.nonlin2 = s.make_nonlin() or nn.Identity()
        strided = any(v != 1 for v in stride)
        ops: list[nn.Module] = []
        if strided:
            ops.append(s.pool(list(stride), list(stride)))
        if cin != cout:
            ops.append(ConvDropoutNormReLU(s, cin, cout, ones, ones, bias=False, dropout=False, nonlin=False))
        self.skip = nn.Sequential(*ops) if ops else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        out = out + self.skip(x)
        return self.nonlin2(out)


class StackedResidualBlocks(nn.Module):
    def __init__(self, s: _Settings, n: int, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int]) -> None:
        super().__init__()
        ones = [1] * s.dims
        self.blocks = nn.Sequential(*[BasicBlockD(s, cin if b == 0 else cout, cout, kernel, stride if b == 0 else ones)
                                      for b in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class PlainConvEncoder(nn.Module):
    def __init__(self, s: _Settings, cin: int, features: Sequence[int], kernels: Sequence[Sequence[int]],
                 strides: Sequence[Sequence[int]], n_conv: Sequence[int]) -> None:
        super().__init__()
        stages = []
        for f, k, st, n in zip(features, kernels, strides, n_conv, strict=True):
            stages.append(nn.Sequential(StackedConvBlocks(s, n, cin, f, k, st)))
            cin = f
        self.stages = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class ResidualEncoder(nn.Module):
    def __init__(self, s: _Settings, cin: int, features: Sequence[int], kernels: Sequence[Sequence[int]],
                 strides: Sequence[Sequence[int]], n_blocks: Sequence[int], stem_channels: int | None) -> None:
        super().__init__()
        stem = stem_channels or features[0]
        self.stem = StackedConvBlocks(s, 1, cin, stem, kernels[0], [1] * s.dims)
        cin = stem
        stages = []
        for f, k, st, n in zip(features, kernels, strides, n_blocks, strict=True):
            stages.append(StackedResidualBlocks(s, n, cin, f, k, st))
            cin = f
        self.stages = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class UNetDecoder(nn.Module):
    """Transposed-conv upsampling, concat skip, conv blocks, a 1x1 head per stage.

    ``encoder`` is kept as a submodule (nnU-Net's state dicts list it again under
    ``decoder.encoder``)."""

    def __init__(self, s: _Settings, encoder: nn.Module, features: Sequence[int], kernels: Sequence[Sequence[int]],
                 strides: Sequence[Sequence[int]], n_conv: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        n = len(features)
        self.transpconvs = nn.ModuleList()
        self.stages = nn.ModuleList()
        self.seg_layers = nn.ModuleList()
        for d in range(1, n):
            below, skip, st = features[-d], features[-(d + 1)], list(strides[-d])
            self.transpconvs.append(s.tconv(below, skip, st, st, bias=s.conv_bias))
            self.stages.append(StackedConvBlocks(s, n_conv[d - 1], 2 * skip, skip, kernels[-(d + 1)], [1] * s.dims))
            self.seg_layers.append(s.conv(skip, num_classes, 1, 1, 0, bias=True))

    def decode(self, skips: list[torch.Tensor], all_heads: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The last stage's features and (when ``all_heads``) every intermediate head's logits."""
        x = skips[-1]
        outputs: list[torch.Tensor] = []
        for d in range(len(self.stages)):
            x = torch.cat((self.transpconvs[d](x), skips[-(d + 2)]), 1)
            x = self.stages[d](x)
            if all_heads and d < len(self.stages) - 1:
                outputs.append(self.seg_layers[d](x))
        return x, outputs


# ------------------------------------------------------------------------ the models
class _NnUNet(nn.Module):
    """What both nnU-Net networks share: decoding, deep supervision, the feature/head split."""

    encoder: nn.Module
    decoder: UNetDecoder

    def __init__(self, in_channels: int, num_classes: int, strides: Sequence[Sequence[int]],
                 deep_supervision: bool, dims: int) -> None:
        super().__init__()
        self.in_channels, self.num_classes, self.spatial_dims = in_channels, num_classes, dims
        self.deep_supervision = deep_supervision
        div = [1] * dims
        for st in strides:
            div = [d * v for d, v in zip(div, st, strict=True)]
        self.input_shape_must_be_divisible_by = div

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        want_all = self.deep_supervision and self.training
        features, outputs = self.decoder.decode(self.encoder(x), want_all)
        outputs.append(self.head(features))
        return outputs[::-1] if want_all else outputs[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Full-resolution decoder features: ``forward(x) == head(forward_features(x))`` in eval mode."""
        return self.decoder.decode(self.encoder(x), False)[0]

    @property
    def head(self) -> nn.Module:
        return self.decoder.seg_layers[-1]


def _per_stage(value: int | Sequence[Any], n: int, name: str) -> list[Any]:
    out = [value] * n if isinstance(value, int) else list(value)
    if len(out) != n:
        raise ValueError(f"{name} needs {n} entries (one per stage), got {len(out)}")
    return out


def _geometry(n_stages: int, kernel_sizes: Any, strides: Any, dims: int | None) -> tuple[int, list[list[int]], list[list[int]]]:
    def as_lists(v: Any, name: str) -> list[list[int]]:
        rows = _per_stage(v, n_stages, name)
        return [[int(r)] * (dims or 3) if isinstance(r, int) else [int(x) for x in r] for r in rows]

    kernels = as_lists(kernel_sizes, "kernel_sizes")
    strides_l = as_lists(strides, "strides")
    ndim = len(kernels[0])
    if any(len(k) != ndim for k in kernels + strides_l):
        raise ValueError("kernel_sizes and strides must all have the same number of spatial dims")
    return ndim, kernels, strides_l


class PlainConvUNet(_NnUNet):
    """nnU-Net's default network: ``n_conv_per_stage`` conv-norm-nonlin layers per stage,
    strided convs down, transposed convs up."""

    def __init__(self, in_channels: int, num_classes: int, *, n_stages: int, features_per_stage: Sequence[int],
                 kernel_sizes: Sequence[Sequence[int]], strides: Sequence[Sequence[int]],
                 n_conv_per_stage: int | Sequence[int], n_conv_per_stage_decoder: int | Sequence[int],
                 conv_bias: bool = True, norm: NormKind | None = "instance", norm_eps: float = 1e-5,
                 norm_affine: bool = True, dropout_p: float = 0.0, nonlin: str | None = "leaky_relu",
                 negative_slope: float = 1e-2, nonlin_first: bool = False, deep_supervision: bool = False) -> None:
        dims, kernels, strides_l = _geometry(n_stages, kernel_sizes, strides, None)
        super().__init__(in_channels, num_classes, strides_l, deep_supervision, dims)
        s = _Settings(dims, conv_bias, norm, norm_eps, norm_affine, dropout_p, nonlin, negative_slope, nonlin_first)
        features = _per_stage(features_per_stage, n_stages, "features_per_stage")
        self.encoder = PlainConvEncoder(s, in_channels, features, kernels, strides_l,
                                        _per_stage(n_conv_per_stage, n_stages, "n_conv_per_stage"))
        self.decoder = UNetDecoder(s, self.encoder, features, kernels, strides_l,
                                   _per_stage(n_conv_per_stage_decoder, n_stages - 1, "n_conv_per_stage_decoder"),
                                   num_classes)
        self.apply(_init_he)


class ResidualEncoderUNet(_NnUNet):
    """nnU-Net's ResEnc U-Net (the M/L/XL presets): a stem, ResNet-D basic blocks in the
    encoder, the plain decoder."""

    def __init__(self, in_channels: int, num_classes: int, *, n_stages: int, features_per_stage: Sequence[int],
                 kernel_sizes: Sequence[Sequence[int]], strides: Sequence[Sequence[int]],
                 n_blocks_per_stage: int | Sequence[int], n_conv_per_stage_decoder: int | Sequence[int],
                 conv_bias: bool = True, norm: NormKind | None = "instance", norm_eps: float = 1e-5,
                 norm_affine: bool = True, dropout_p: float = 0.0, nonlin: str | None = "leaky_relu",
                 negative_slope: float = 1e-2, stem_channels: int | None = None,
                 deep_supervision: bool = False) -> None:
        dims, kernels, strides_l = _geometry(n_stages, kernel_sizes, strides, None)
        super().__init__(in_channels, num_classes, strides_l, deep_supervision, dims)
        s = _Settings(dims, conv_bias, norm, norm_eps, norm_affine, dropout_p, nonlin, negative_slope, False)
        features = _per_stage(features_per_stage, n_stages, "features_per_stage")
        self.encoder = ResidualEncoder(s, in_channels, features, kernels, strides_l,
                                       _per_stage(n_blocks_per_stage, n_stages, "n_blocks_per_stage"), stem_channels)
        self.decoder = UNetDecoder(s, self.encoder, features, kernels, strides_l,
                                   _per_stage(n_conv_per_stage_decoder, n_stages - 1, "n_conv_per_stage_decoder"),
                                   num_classes)
        self.apply(_init_he)


def _init_he(module: nn.Module) -> None:
    """nnU-Net's InitWeights_He(1e-2)."""
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=1e-2)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# ------------------------------------------------------------------ registered factories
# Defaults: what nnU-Net's planners write for a typical 3D CT dataset (6 stages, 32..320).
_DEFAULT_3D = {"n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320], "kernel_sizes": [[3, 3, 3]] * 6,
               "strides": [[1, 1, 1]] + [[2, 2, 2]] * 5}


@register_model
def nnunet_plain_unet(in_channels: int = 1, num_classes: int = 2, **cfg: Any) -> PlainConvUNet:
    """nnU-Net v2 PlainConvUNet (default 3d_fullres plan: 6 stages, 32..320, 2 convs per stage)."""
    kw: dict[str, Any] = {**_DEFAULT_3D, "n_conv_per_stage": 2, "n_conv_per_stage_decoder": 2, **cfg}
    return PlainConvUNet(in_channels, num_classes, **kw)


@register_model
def nnunet_resenc_unet(in_channels: int = 1, num_classes: int = 2, **cfg: Any) -> ResidualEncoderUNet:
    """nnU-Net v2 ResidualEncoderUNet (the ResEnc M/L/XL presets: 1,3,4,6,6,6 blocks, 32..320)."""
    kw: dict[str, Any] = {**_DEFAULT_3D, "n_blocks_per_stage": [1, 3, 4, 6, 6, 6], "n_conv_per_stage_decoder": 1, **cfg}
    return ResidualEncoderUNet(in_channels, num_classes, **kw)
