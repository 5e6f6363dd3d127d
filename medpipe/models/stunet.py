"""STU-Net: the scalable residual nnU-Net (Huang et al. 2023), as published.

Why our own file instead of importing the official one: the official ``STUNet`` class
lives inside a patched nnU-Net v1 tree (``SegmentationNetwork``, batchgenerators) and is
3D-only. We keep its module and parameter *names* — ``conv_blocks_context``,
``upsample_layers``, ``conv_blocks_localization``, ``seg_outputs``, and inside a block
``conv1/norm1/conv2/norm2/conv3`` — so official checkpoints (``state_dict`` /
``network_weights``) load with ``load_state_dict(strict=True)`` and no conversion.

Structure (per the paper and the official code):

* block = conv–IN–LeakyReLU–conv–IN (+ 1×1 conv shortcut) → LeakyReLU; the *first* block
  of every stage has the 1×1 shortcut (as in the official code, even when the shape is
  unchanged), and in encoder stages 1..5 it is strided by that stage's pool kernel;
* upsampling = nearest interpolation + 1×1 conv (no transposed conv);
* decoder = concat skip → blocks; one 1×1 head (with bias) per decoder stage;
* deep supervision returns ``[full-res, 1/2, 1/4, ...]`` in training mode only.

With 1 input channel, 105 classes and five 2×2×2 pools the sizes S/B/L/H have
14.60 M / 58.26 M / 440.30 M / 1457.33 M parameters (the published counts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medpipe.models.registry import register_model

__all__ = ["BasicResBlock", "UpsampleLayerNearest", "STUNet", "stunet_xs", "stunet_s", "stunet_b",
           "stunet_l", "stunet_h"]

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}


class BasicResBlock(nn.Module):
    """Residual block; ``conv3`` is the optional 1×1 shortcut (official name)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Sequence[int],
                 stride: Sequence[int] | int = 1, use_1x1conv: bool = False, spatial_dims: int = 3):
        super().__init__()
        conv, norm = _CONV[spatial_dims], _NORM[spatial_dims]
        padding = [k // 2 for k in kernel_size]
        self.conv1 = conv(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        self.norm1 = norm(out_channels, affine=True)
        self.act1 = nn.LeakyReLU(inplace=True)
        self.conv2 = conv(out_channels, out_channels, kernel_size, padding=padding)
        self.norm2 = norm(out_channels, affine=True)
        self.act2 = nn.LeakyReLU(inplace=True)
        self.conv3 = conv(in_channels, out_channels, kernel_size=1, stride=stride) if use_1x1conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        shortcut = self.conv3(x) if self.conv3 is not None else x
        return self.act2(y + shortcut)


class UpsampleLayerNearest(nn.Module):
    """Nearest-neighbour upsampling by the pool kernel, then a 1×1 conv to the skip width."""

    def __init__(self, in_channels: int, out_channels: int, scale: Sequence[int], spatial_dims: int = 3):
        super().__init__()
        self.conv = _CONV[spatial_dims](in_channels, out_channels, kernel_size=1)
        self.scale = tuple(float(s) for s in scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(s != 1.0 for s in self.scale):
            x = F.interpolate(x, scale_factor=self.scale, mode="nearest")
        return self.conv(x)


def _stage(in_ch: int, out_ch: int, depth: int, kernel: Sequence[int], stride: Sequence[int] | int,
           spatial_dims: int) -> nn.Sequential:
    first = BasicResBlock(in_ch, out_ch, kernel, stride=stride, use_1x1conv=True, spatial_dims=spatial_dims)
    rest = [BasicResBlock(out_ch, out_ch, kernel, spatial_dims=spatial_dims) for _ in range(depth - 1)]
    return nn.Sequential(first, *rest)


class STUNet(nn.Module):
    """STU-Net with nnU-Net-plans-style ``pool_op_kernel_sizes`` / ``conv_kernel_sizes``.

    ``pool_op_kernel_sizes`` has one entry per downsampling (``len(widths) - 1``);
    ``conv_kernel_sizes`` one per stage. Inputs must be divisible by
    ``input_shape_must_be_divisible_by`` (the product of the pools per axis).
    """

    def __init__(self, in_channels: int, num_classes: int, *, widths: Sequence[int], depth: Sequence[int],
                 pool_op_kernel_sizes: Sequence[Sequence[int]] | None = None,
                 conv_kernel_sizes: Sequence[Sequence[int]] | None = None,
                 deep_supervision: bool = False, spatial_dims: int = 3):
        super().__init__()
        if spatial_dims not in _CONV:
            raise ValueError(f"STU-Net supports spatial_dims 2 or 3, not {spatial_dims}")
        n_stages = len(widths)
        if len(depth) != n_stages:
            raise ValueError(f"depth has {len(depth)} entries but widths has {n_stages}")
        num_pool = n_stages - 1
        pools = [list(p) for p in (pool_op_kernel_sizes or [[2] * spatial_dims] * num_pool)]
        kernels = [list(k) for k in (conv_kernel_sizes or [[3] * spatial_dims] * n_stages)]
        if len(pools) != num_pool or len(kernels) != n_stages:
            raise ValueError(f"STU-Net with {n_stages} stages needs {num_pool} pool_op_kernel_sizes and "
                             f"{n_stages} conv_kernel_sizes, got {len(pools)} and {len(kernels)}")
        if any(len(p) != spatial_dims for p in pools + kernels):
            raise ValueError(f"every pool/conv kernel size must have {spatial_dims} entries")

        self.in_channels = in_channels
        self.num_classes = num_classes
        self.spatial_dims = spatial_dims
        self.deep_supervision = deep_supervision
        self.pool_op_kernel_sizes = pools
        self.conv_kernel_sizes = kernels
        self.input_shape_must_be_divisible_by = [
            math.prod(p[a] for p in pools) for a in range(spatial_dims)]

        self.conv_blocks_context = nn.ModuleList(
            [_stage(in_channels, widths[0], depth[0], kernels[0], 1, spatial_dims)]
            + [_stage(widths[d - 1], widths[d], depth[d], kernels[d], pools[d - 1], spatial_dims)
               for d in range(1, n_stages)])
        # Decoder stage u works at encoder level L = num_pool - 1 - u (deepest first).
        self.upsample_layers = nn.ModuleList(
            [UpsampleLayerNearest(widths[-1 - u], widths[-2 - u], pools[-1 - u], spatial_dims)
             for u in range(num_pool)])
        self.conv_blocks_localization = nn.ModuleList(
            [_stage(2 * widths[-2 - u], widths[-2 - u], depth[-2 - u], kernels[-2 - u], 1, spatial_dims)
             for u in range(num_pool)])
        self.seg_outputs = nn.ModuleList(
            [_CONV[spatial_dims](widths[-2 - u], num_classes, kernel_size=1) for u in range(num_pool)])
        self.apply(_init_he)

    def _decode(self, x: torch.Tensor, heads: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encoder + decoder: the full-resolution features, and (``heads``) every
        decoder stage's head output, deepest first."""
        skips = []
        for stage in self.conv_blocks_context[:-1]:
            x = stage(x)
            skips.append(x)
        x = self.conv_blocks_context[-1](x)
        outputs = []
        for u, (up, dec) in enumerate(zip(self.upsample_layers, self.conv_blocks_localization, strict=True)):
            x = dec(torch.cat((up(x), skips[-(u + 1)]), dim=1))
            if heads and u < len(self.conv_blocks_localization) - 1:
                outputs.append(self.seg_outputs[u](x))
        return x, outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        want_all = self.deep_supervision and self.training
        features, outputs = self._decode(x, want_all)
        outputs.append(self.head(features))
        if want_all:
            return outputs[::-1]  # full resolution first, as nnU-Net's deep-supervision loss expects
        return outputs[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The full-resolution decoder features in front of ``head`` (``widths[0]`` channels):
        ``forward(x) == head(forward_features(x))`` in eval mode. Sliding-window inference
        stitches these instead of the logits when there are more classes than features."""
        return self._decode(x, False)[0]

    @property
    def head(self) -> nn.Module:
        """The final 1x1 convolution (``seg_outputs[-1]``, the full-resolution head)."""
        return self.seg_outputs[-1]


def _init_he(module: nn.Module) -> None:
    """nnU-Net's InitWeights_He(1e-2): Kaiming-normal convs, zero biases."""
    if isinstance(module, (nn.Conv2d, nn.Conv3d)):
        nn.init.kaiming_normal_(module.weight, a=1e-2)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


_SIZES: dict[str, tuple[tuple[int, ...], int]] = {
    "xs": ((8, 16, 32, 64, 64, 64), 1),
    "s": ((16, 32, 64, 128, 256, 256), 1),
    "b": ((32, 64, 128, 256, 512, 512), 1),
    "l": ((64, 128, 256, 512, 1024, 1024), 2),
    "h": ((96, 192, 384, 768, 1536, 1536), 3),
}


def _create_stunet(size: str, in_channels: int = 1, num_classes: int = 2, *,
                   pool_op_kernel_sizes: Sequence[Sequence[int]] | None = None,
                   conv_kernel_sizes: Sequence[Sequence[int]] | None = None,
                   deep_supervision: bool = False, spatial_dims: int = 3) -> STUNet:
    widths, blocks = _SIZES[size]
    return STUNet(in_channels, num_classes, widths=widths, depth=[blocks] * len(widths),
                  pool_op_kernel_sizes=pool_op_kernel_sizes, conv_kernel_sizes=conv_kernel_sizes,
                  deep_supervision=deep_supervision, spatial_dims=spatial_dims)


@register_model
def stunet_xs(**cfg) -> STUNet:
    """Tiny STU-Net (8..64 channels, 1 block/stage, 6 MB fp32) for tests and the CPU demo."""
    return _create_stunet("xs", **cfg)


@register_model
def stunet_s(**cfg) -> STUNet:
    """STU-Net-S: 16..256 channels, 1 block/stage (14.60 M params at 1→105)."""
    return _create_stunet("s", **cfg)


@register_model
def stunet_b(**cfg) -> STUNet:
    """STU-Net-B: 32..512 channels, 1 block/stage (58.26 M params at 1→105)."""
    return _create_stunet("b", **cfg)


@register_model
def stunet_l(**cfg) -> STUNet:
    """STU-Net-L: 64..1024 channels, 2 blocks/stage (440.30 M params at 1→105)."""
    return _create_stunet("l", **cfg)


@register_model
def stunet_h(**cfg) -> STUNet:
    """STU-Net-H: 96..1536 channels, 3 blocks/stage (1457.33 M params at 1→105)."""
    return _create_stunet("h", **cfg)
