"""Reversible MBConv 3D U-Net (Pendse et al., BrainLes/BraTS 2020): a U-Net whose stages are
reversible mobile inverted bottlenecks, so training stores almost no activations.

Why our own: the paper has no public code. What it specifies, and what this file builds:

* block = MobileNetV2/EfficientNet inverted bottleneck (1x1 expand -> norm -> SiLU ->
  depthwise 3x3x3 -> norm -> SiLU -> [dropout] -> 1x1 project -> norm, a linear bottleneck),
  made reversible by additive coupling on split channels: ``y1 = x1 + F(x2)``,
  ``y2 = x2 + G(y1)``, inverted exactly by ``x2 = y2 - G(y1)``, ``x1 = y1 - F(x2)``;
* a stage of such blocks runs inside one custom autograd ``Function``
  (``_ReversibleStage``) that keeps no reference to its input and none of the blocks'
  intermediate tensors: backward reconstructs each block's input from its output and
  recomputes the block with grad enabled, one block at a time. The RNG state of every
  F/G call is recorded in forward and restored for the recomputation (dropout masks
  match), and BatchNorm running statistics are saved and restored around the
  recomputation, so they are updated once per step, as in the non-reversible net;
* only the layers that change shape keep activations: the stem, the strided down
  convolutions and the transposed-convolution upsamplings; skips are added (not
  concatenated), so the decoder stages stay reversible too;
* ``reversible=False`` runs the very same modules as an ordinary network that stores its
  activations (the "twin" the tests and ``benchmarks/reversible_memory.py`` compare with).

Plans: ``pool_op_kernel_sizes`` / ``conv_kernel_sizes`` as nnU-Net writes them (the
trainer passes them), so anisotropic spacing gets 1-voxel kernels where nnU-Net would.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from medpipe.models._heads import DeepSupervisionHeads
from medpipe.models.registry import register_model

__all__ = ["MBConv", "ReversibleBlock", "ReversibleStage", "RevUNet", "revunet_xs", "revunet_s", "revunet_brats"]

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONVT = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_DROP = {2: nn.Dropout2d, 3: nn.Dropout3d}


def _norm(kind: str, channels: int, spatial_dims: int) -> nn.Module:
    if kind == "instance":
        return (nn.InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d)(channels, affine=True)
    if kind == "batch":
        return (nn.BatchNorm3d if spatial_dims == 3 else nn.BatchNorm2d)(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    raise ValueError(f"norm must be 'instance', 'batch' or 'group', got {kind!r}")


class _Pointwise(nn.Conv3d):
    """A 1x1x1 convolution computed as a GEMM over the channels of a channels-last tensor
    (ATen sends 1x1x1 convs to its slow im2col path on CPU, forward and backward)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or not x.is_contiguous(memory_format=torch.channels_last_3d):
            return super().forward(x)
        w = self.weight.view(self.out_channels, self.in_channels)
        return nn.functional.linear(x.permute(0, 2, 3, 4, 1), w, self.bias).permute(0, 4, 1, 2, 3)


class _Depthwise(nn.Conv3d):
    """Depthwise 3D convolution; on CPU with the weight in channels-last too, which is what
    makes oneDNN's kernel fast in backward (0.3 s vs 0.9 s for 2x16x64^3, measured)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or not x.is_contiguous(memory_format=torch.channels_last_3d):
            return super().forward(x)
        w = self.weight.contiguous(memory_format=torch.channels_last_3d)
        return nn.functional.conv3d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted bottleneck without its own residual (the coupling adds it)."""

    def __init__(self, channels: int, expand: int = 4, kernel_size: Sequence[int] | int = 3, *,
                 norm: str = "instance", dropout: float = 0.0, spatial_dims: int = 3):
        super().__init__()
        conv = _CONV[spatial_dims]
        hidden = channels * expand
        k = [kernel_size] * spatial_dims if isinstance(kernel_size, int) else list(kernel_size)
        pointwise = _Pointwise if spatial_dims == 3 else conv
        self.expand = pointwise(channels, hidden, 1, bias=False)
        self.norm1 = _norm(norm, hidden, spatial_dims)
        self.act1 = nn.SiLU()
        self.depthwise = (_Depthwise if spatial_dims == 3 else conv)(hidden, hidden, k, padding=[s // 2 for s in k], groups=hidden, bias=False)
        self.norm2 = _norm(norm, hidden, spatial_dims)
        self.act2 = nn.SiLU()
        self.dropout = _DROP[spatial_dims](dropout) if dropout > 0 else nn.Identity()
        self.project = pointwise(hidden, channels, 1, bias=False)
        self.norm3 = _norm(norm, channels, spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5 and x.device.type == "cpu":
            # oneDNN's depthwise 3D convolution: backward ~3x faster in channels-last (measured)
            x = x.contiguous(memory_format=torch.channels_last_3d)
        x = self.act1(self.norm1(self.expand(x)))
        x = self.dropout(self.act2(self.norm2(self.depthwise(x))))
        return self.norm3(self.project(x))


class ReversibleBlock(nn.Module):
    """Additive coupling of two MBConvs on the two channel halves."""

    def __init__(self, channels: int, expand: int = 4, kernel_size: Sequence[int] | int = 3, *,
                 norm: str = "instance", dropout: float = 0.0, spatial_dims: int = 3):
        super().__init__()
        if channels % 2:
            raise ValueError(f"a reversible block splits its channels in two; {channels} is odd")
        half = channels // 2
        self.f = MBConv(half, expand, kernel_size, norm=norm, dropout=dropout, spatial_dims=spatial_dims)
        self.g = MBConv(half, expand, kernel_size, norm=norm, dropout=dropout, spatial_dims=spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        y1 = x1 + self.f(x2)
        y2 = x2 + self.g(y1)
        return torch.cat((y1, y2), dim=1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """The input that produced ``y`` (exact up to rounding; eval-mode norms, no dropout)."""
        y1, y2 = y.chunk(2, dim=1)
        x2 = y2 - self.g(y1)
        x1 = y1 - self.f(x2)
        return torch.cat((x1, x2), dim=1)


# ----------------------------------------------------------------------- the memory-saving Function
def _uses_rng(module: nn.Module) -> bool:
    return module.training and any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0
                                   for m in module.modules())


class _RngState:
    """The CPU (and CUDA, for CUDA tensors) generator state before a call, to replay it."""

    def __init__(self, device: torch.device):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        self.device = device

    @contextmanager
    def replay(self) -> Iterator[None]:
        devices = [self.device] if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


@contextmanager
def _norm_stats_frozen(module: nn.Module) -> Iterator[None]:
    """Recomputation must not update BatchNorm running statistics a second time."""
    saved = [(m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
             for m in module.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats]
    try:
        yield
    finally:
        for m, mean, var, n in saved:
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(n)


def _call(fn: nn.Module, x: torch.Tensor, states: list, record: bool) -> torch.Tensor:
    if record:
        states.append(_RngState(x.device) if _uses_rng(fn) else None)
    return fn(x)


class _ReversibleStage(torch.autograd.Function):
    """Forward without storing anything but the stage output; backward block by block:
    reconstruct the block input, recompute F and G with grad, return input and parameter grads."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, blocks: list[ReversibleBlock], n_params: int, *params: torch.Tensor):
        ctx.blocks = blocks
        ctx.states = []
        with torch.no_grad():
            y = x
            for block in blocks:
                x1, x2 = y.chunk(2, dim=1)
                y1 = x1 + _call(block.f, x2, ctx.states, True)
                y2 = x2 + _call(block.g, y1, ctx.states, True)
                y = torch.cat((y1, y2), dim=1)
        ctx.save_for_backward(y)
        ctx.params = params
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        (y,) = ctx.saved_tensors
        grads: dict[int, torch.Tensor] = {}
        states = iter(reversed(ctx.states))
        y = y.detach()
        for block in reversed(ctx.blocks):
            g_state, f_state = next(states), next(states)
            y1, y2 = y.chunk(2, dim=1)
            dy1, dy2 = dy.chunk(2, dim=1)
            with _norm_stats_frozen(block):
                gz, d_y1 = _recompute(block.g, y1, g_state, dy2, grads)  # y2 = x2 + G(y1)
                x2 = y2 - gz
                dy1 = dy1 + d_y1
                fz, d_x2 = _recompute(block.f, x2, f_state, dy1, grads)  # y1 = x1 + F(x2)
                x1 = y1 - fz
                dy2 = dy2 + d_x2
            y = torch.cat((x1, x2), dim=1)
            dy = torch.cat((dy1, dy2), dim=1)
        param_grads = [grads.get(id(p)) for p in ctx.params]
        ctx.blocks = ctx.states = ctx.params = None
        return (dy, None, None, *param_grads)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _recompute(fn: nn.Module, x: torch.Tensor, state: _RngState | None, d_out: torch.Tensor,
               grads: dict[int, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``fn(x)`` again (same RNG draws), with grad: its value, d/dx, parameter grads accumulated."""
    z = x.detach().requires_grad_(True)
    with torch.enable_grad(), (state.replay() if state else _nothing()):
        out = fn(z)
    params = [p for p in fn.parameters() if p.requires_grad]
    got = torch.autograd.grad(out, [z, *params], d_out, allow_unused=True)
    _accumulate(grads, params, got[1:])
    return out.detach(), got[0]


def _accumulate(grads: dict[int, torch.Tensor], params: list[torch.Tensor], values) -> None:
    for p, g in zip(params, values, strict=True):
        if g is None:
            continue
        grads[id(p)] = g if id(p) not in grads else grads[id(p)] + g


class ReversibleStage(nn.Module):
    """A sequence of reversible blocks; ``reversible=True`` runs it through ``_ReversibleStage``
    when gradients are needed, else it runs the blocks plainly (inference, or the twin)."""

    def __init__(self, channels: int, depth: int, expand: int = 4, kernel_size: Sequence[int] | int = 3, *,
                 norm: str = "instance", dropout: float = 0.0, spatial_dims: int = 3):
        super().__init__()
        self.blocks = nn.ModuleList([ReversibleBlock(channels, expand, kernel_size, norm=norm, dropout=dropout,
                                                     spatial_dims=spatial_dims) for _ in range(depth)])
        self.reversible = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = [p for p in self.parameters() if p.requires_grad]
        if self.reversible and torch.is_grad_enabled() and (x.requires_grad or params):
            return _ReversibleStage.apply(x, list(self.blocks), len(params), *params)
        for block in self.blocks:
            x = block(x)
        return x

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        for block in reversed(self.blocks):
            y = block.inverse(y)
        return y


# ------------------------------------------------------------------------------------- the network
class _ConvNormAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int] | int, norm: str,
                 spatial_dims: int):
        super().__init__(_CONV[spatial_dims](cin, cout, list(kernel), stride=stride, padding=[k // 2 for k in kernel],
                                             bias=False),
                         _norm(norm, cout, spatial_dims), nn.SiLU())


class RevUNet(DeepSupervisionHeads, nn.Module):
    """U-Net of reversible MBConv stages; see the module docstring for what is stored when."""

    def __init__(self, in_channels: int, num_classes: int, *, widths: Sequence[int], depth: Sequence[int] | int,
                 pool_op_kernel_sizes: Sequence[Sequence[int]] | None = None,
                 conv_kernel_sizes: Sequence[Sequence[int]] | None = None, expand: int = 4,
                 norm: str = "instance", dropout: float = 0.0, deep_supervision: bool = False,
                 reversible: bool = True, spatial_dims: int = 3):
        super().__init__()
        if spatial_dims not in _CONV:
            raise ValueError(f"RevUNet supports spatial_dims 2 or 3, not {spatial_dims}")
        n = len(widths)
        depth = [depth] * n if isinstance(depth, int) else list(depth)
        pools = [list(p) for p in (pool_op_kernel_sizes or [[2] * spatial_dims] * (n - 1))]
        kernels = [list(k) for k in (conv_kernel_sizes or [[3] * spatial_dims] * n)]
        if len(depth) != n or len(pools) != n - 1 or len(kernels) != n:
            raise ValueError(f"RevUNet with {n} stages needs {n} depths, {n - 1} pool_op_kernel_sizes and {n} "
                             f"conv_kernel_sizes, got {len(depth)}, {len(pools)} and {len(kernels)}")
        if any(len(p) != spatial_dims for p in pools + kernels):
            raise ValueError(f"every pool/conv kernel size must have {spatial_dims} entries")
        self.in_channels, self.num_classes, self.spatial_dims = in_channels, num_classes, spatial_dims
        self.deep_supervision = deep_supervision
        self.input_shape_must_be_divisible_by = [math.prod(p[a] for p in pools) for a in range(spatial_dims)]
        stage = dict(expand=expand, norm=norm, dropout=dropout, spatial_dims=spatial_dims)

        self.stem = _ConvNormAct(in_channels, widths[0], kernels[0], 1, norm, spatial_dims)
        self.encoder = nn.ModuleList([ReversibleStage(widths[s], depth[s], kernel_size=kernels[s], **stage)
                                      for s in range(n)])
        self.down = nn.ModuleList([_ConvNormAct(widths[s], widths[s + 1], kernels[s + 1], pools[s], norm, spatial_dims)
                                   for s in range(n - 1)])
        # decoder stage u works at level n - 2 - u (deepest first)
        self.up = nn.ModuleList([_CONVT[spatial_dims](widths[-1 - u], widths[-2 - u], pools[-1 - u], stride=pools[-1 - u])
                                 for u in range(n - 1)])
        self.decoder = nn.ModuleList([ReversibleStage(widths[-2 - u], depth[-2 - u], kernel_size=kernels[-2 - u],
                                                      **stage) for u in range(n - 1)])
        self.seg_outputs = nn.ModuleList([_CONV[spatial_dims](widths[-2 - u], num_classes, 1) for u in range(n - 1)])
        self.apply(_init)
        self.set_reversible(reversible)

    def set_reversible(self, reversible: bool) -> RevUNet:
        """Switch between the memory-saving path and the plain twin (same weights)."""
        self.reversible = bool(reversible)
        for m in self.modules():
            if isinstance(m, ReversibleStage):
                m.reversible = self.reversible
        return self

    def _decode(self, x: torch.Tensor, heads: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.stem(x)
        skips = []
        for s, stage in enumerate(self.encoder):
            x = stage(x)
            if s < len(self.down):
                skips.append(x)
                x = self.down[s](x)
        outputs = []
        for u, (up, stage) in enumerate(zip(self.up, self.decoder, strict=True)):
            x = stage(up(x) + skips[-1 - u])
            if heads and u < len(self.decoder) - 1:
                outputs.append(self.seg_outputs[u](x))
        return x, outputs

    @property
    def head(self) -> nn.Module:
        return self.seg_outputs[-1]


def _init(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, a=1e-2)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


_SIZES: dict[str, tuple[tuple[int, ...], int]] = {
    "xs": ((8, 16, 32, 64, 96, 96), 1),
    "s": ((16, 32, 64, 128, 192, 192), 2),
    "brats": ((32, 64, 128, 256, 320, 320), 2),
}


def _create_revunet(size: str, in_channels: int = 1, num_classes: int = 2, **cfg) -> RevUNet:
    widths, depth = _SIZES[size]
    return RevUNet(in_channels, num_classes, widths=widths, depth=depth, **cfg)


@register_model
def revunet_xs(**cfg) -> RevUNet:
    """Tiny reversible MBConv U-Net (8..96 channels, 1 block per stage): tests and the shipped brain bundle."""
    return _create_revunet("xs", **cfg)


@register_model
def revunet_s(**cfg) -> RevUNet:
    """Small reversible MBConv U-Net (16..192 channels, 2 blocks per stage)."""
    return _create_revunet("s", **cfg)


@register_model
def revunet_brats(**cfg) -> RevUNet:
    """BraTS-size reversible MBConv U-Net (32..320 channels as nnU-Net's 3D plan, 2 blocks per stage;
    4 MR channels, 128^3 crops)."""
    return _create_revunet("brats", **cfg)
