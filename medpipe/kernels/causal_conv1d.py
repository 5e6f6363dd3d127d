"""Mamba's causal depthwise conv1d (+ SiLU): a PyTorch reference and a fused Triton path.

``y[b, d, t] = act(bias[d] + sum_j w[d, j] * x[b, d, t - (k - 1) + j])`` with zeros before the
start. The reference is what ``mamba_ssm`` does without ``causal-conv1d`` (a grouped
``conv1d`` padded by ``k - 1`` on both sides, the tail cut off, then SiLU): on CPU that is
oneDNN's depthwise kernel, which we keep. On CUDA the Triton kernel does conv, bias and
SiLU in one pass (no padded copy, no separate activation); its backward recomputes the
reference under autograd (the conv is a small share of a Mamba layer's time).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["causal_conv1d", "causal_conv1d_reference"]


def causal_conv1d_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                            activation: str | None = "silu") -> torch.Tensor:
    """``x`` (B, D, L), ``weight`` (D, k) or (D, 1, k), ``bias`` (D,)."""
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    w = weight if weight.dim() == 3 else weight[:, None, :]
    k = w.shape[-1]
    y = F.conv1d(x, w, bias, padding=k - 1, groups=x.shape[1])[..., : x.shape[-1]]
    return F.silu(y) if activation else y


class _TritonConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, silu: bool):
        from medpipe.kernels.selective_scan_triton import causal_conv1d_triton

        ctx.save_for_backward(x, weight, bias)
        ctx.silu = silu
        return causal_conv1d_triton(x, weight, bias, silu).to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias = ctx.saved_tensors
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(t.requires_grad) if t is not None else None for t in (x, weight, bias)]
            y = causal_conv1d_reference(leaves[0], leaves[1], leaves[2], "silu" if ctx.silu else None)
            need = [t for t in leaves if t is not None and t.requires_grad]
            got = iter(torch.autograd.grad(y, need, dy) if need else [])
        return (*[next(got) if t is not None and t.requires_grad else None for t in leaves], None)


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  activation: str | None = "silu", *,
                  backend: Literal["auto", "reference", "triton"] = "auto") -> torch.Tensor:
    """Dispatcher: Triton on CUDA (when installed), the reference elsewhere; ``backend="triton"``
    on CPU tensors is how the tests run the kernel under ``TRITON_INTERPRET=1``."""
    from medpipe.kernels.dispatch import load_triton_impl, triton_available

    use = backend == "triton" or (backend == "auto" and x.is_cuda and triton_available())
    if not use:
        return causal_conv1d_reference(x, weight, bias, activation)
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    load_triton_impl()  # a clear error naming the extra when triton is missing
    return _TritonConv.apply(x, weight.reshape(weight.shape[0], -1), bias, activation is not None)
