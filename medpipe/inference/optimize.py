"""Inference-time rewrites of a network: same weights, same maths, faster kernels on CPU.

Why: profiling STU-Net on the 2-core AVX512 machine showed ATen running every 1x1x1
convolution (shortcuts, upsampling convs, heads — 21 of STU-Net's 43 convs), the
1-channel stem conv and the deep 12^3/6^3 convs through ``slow_conv3d`` (im2col +
copies). As one ``addmm`` over the channel axis a 1x1x1 conv is 3-7x faster, and calling
oneDNN's convolution directly is 1.6-3x faster for the others (docs/inference.md). The
InstanceNorm + LeakyReLU pair of a residual block goes through the fused-op dispatcher
(Triton on CUDA, the reference on CPU).

The rewrite is explicit (``optimize_for_inference(model)`` returns a new module tree
sharing the original parameters), never a hidden patch of ``torch.nn``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from medpipe.kernels import instance_norm_leaky_relu

__all__ = ["PointwiseConv3d", "OneDNNConv3d", "FusedInstanceNormLeakyReLU", "optimize_for_inference"]


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return None


class PointwiseConv3d(nn.Module):
    """A 1x1x1 ``Conv3d`` computed as a matrix product over channels (any stride)."""

    def __init__(self, conv: nn.Conv3d):
        super().__init__()
        self.weight = conv.weight
        self.bias = conv.bias
        self.stride = tuple(conv.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != (1, 1, 1):
            x = x[:, :, :: self.stride[0], :: self.stride[1], :: self.stride[2]]
        w = self.weight.view(self.weight.shape[0], self.weight.shape[1])
        if x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous():
            # (N, D, H, W, C) view: a linear layer over the innermost axis, result stays channels-last
            y = nn.functional.linear(x.permute(0, 2, 3, 4, 1), w, self.bias)
            return y.permute(0, 4, 1, 2, 3)
        n, c = x.shape[:2]
        spatial = x.shape[2:]
        cast = _autocast_dtype(x)
        if cast is not None:  # one explicit cast; the GEMMs below then run in that dtype
            x, w = x.to(cast), w.to(cast)
        b = self.bias.to(w.dtype).view(-1, 1) if self.bias is not None else None
        xs = x.reshape(n, c, -1)
        # (Cout x Cin) @ (Cin x S): the result is already (Cout, S), no transpose copy
        ys = [torch.addmm(b, w, xs[i]) if b is not None else torch.mm(w, xs[i]) for i in range(n)]
        y = ys[0][None] if n == 1 else torch.stack(ys)
        return y.view(n, -1, *spatial)


class OneDNNConv3d(nn.Module):
    """A ``Conv3d`` (zero padding) that calls oneDNN's convolution directly on CPU.

    ATen's heuristics route 1-input-channel and small-spatial convs to ``slow_conv3d``;
    the oneDNN kernel computes the same convolution faster. Other devices use ``conv3d``.
    """

    def __init__(self, conv: nn.Conv3d):
        super().__init__()
        self.weight = conv.weight
        self.bias = conv.bias
        self.stride = list(conv.stride)
        self.padding = list(conv.padding)
        self.dilation = list(conv.dilation)
        self.groups = conv.groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        if x.device.type != "cpu" or not torch.backends.mkldnn.is_available() or x.dtype not in (
                torch.float32, torch.bfloat16):
            return nn.functional.conv3d(x, w, b, self.stride, self.padding, self.dilation, self.groups)
        dtype = _autocast_dtype(x) or x.dtype
        x, w = x.to(dtype), w.to(dtype)
        b = b.to(dtype) if b is not None else None
        return torch.ops.aten.mkldnn_convolution(x, w, b, self.padding, self.stride, self.dilation, self.groups)


class FusedInstanceNormLeakyReLU(nn.Module):
    """``InstanceNorm`` followed by ``LeakyReLU`` as one dispatched op (shares the norm's parameters)."""

    def __init__(self, norm: nn.modules.instancenorm._InstanceNorm, act: nn.LeakyReLU):
        super().__init__()
        self.weight = norm.weight
        self.bias = norm.bias
        self.eps = norm.eps
        self.negative_slope = act.negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return instance_norm_leaky_relu(x, self.weight, self.bias, self.eps, self.negative_slope)


def _is_pointwise(m: nn.Module) -> bool:
    return (isinstance(m, nn.Conv3d) and tuple(m.kernel_size) == (1, 1, 1) and tuple(m.padding) == (0, 0, 0)
            and tuple(m.dilation) == (1, 1, 1) and m.groups == 1)


def _is_plain_conv3d(m: nn.Module) -> bool:
    return type(m) is nn.Conv3d and m.padding_mode == "zeros" and isinstance(m.padding, tuple)


def _fusable_norm(m: nn.Module) -> bool:
    return (isinstance(m, nn.modules.instancenorm._InstanceNorm) and not m.track_running_stats)


def optimize_for_inference(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (parameters shared, not copied) with the rewrites applied.

    Fuses ``norm1`` + ``act1`` pairs (the conv–IN–LeakyReLU of STU-Net / nnU-Net residual
    blocks, where ``act1`` directly follows ``norm1``), turns 1x1x1 convs into GEMMs and
    sends the other 3D convs straight to oneDNN.
    """
    params = {id(p): p for p in model.parameters()}
    new = copy.copy(model)  # shallow: children are replaced below, parameters stay shared
    new._modules = dict(model._modules)
    for name, child in model.named_children():
        if _is_pointwise(child):
            new._modules[name] = PointwiseConv3d(child)
        elif _is_plain_conv3d(child):
            new._modules[name] = OneDNNConv3d(child)
        else:
            new._modules[name] = optimize_for_inference(child)
    norm, act = new._modules.get("norm1"), new._modules.get("act1")
    if norm is not None and isinstance(act, nn.LeakyReLU) and _fusable_norm(norm):
        new._modules["norm1"] = FusedInstanceNormLeakyReLU(norm, act)
        new._modules["act1"] = nn.Identity()
    assert all(id(p) in params for p in new.parameters())
    return new
