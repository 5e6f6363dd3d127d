"""One entry point per fused op: pick the Triton kernel or the PyTorch reference.

Rule: Triton on CUDA (when installed), the reference on CPU. ``backend=`` forces one
(``"triton"`` on CPU tensors is how tests run the kernels under ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Literal

import torch

from medpipe.errors import ResourceError
from medpipe.kernels.reference import (
    accumulate_patch_mean_reference,
    accumulate_patch_reference,
    instance_norm_leaky_relu_reference,
)

__all__ = ["instance_norm_leaky_relu", "accumulate_patch", "triton_available", "load_triton_impl"]

Backend = Literal["auto", "reference", "triton"]


def triton_available() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ValueError, ImportError):  # e.g. sys.modules["triton"] is None
        return False


def load_triton_impl():
    """Import the Triton kernels, or say which extra installs them."""
    try:
        from medpipe.kernels import triton_impl
    except ImportError as exc:
        if (exc.name or "").split(".")[0] != "triton":
            raise
        raise ResourceError("the Triton kernels need the 'triton' package, which is not installed: "
                            "pip install 'medpipe[triton]'") from exc
    return triton_impl


def _use_triton(t: torch.Tensor, backend: Backend) -> bool:
    if backend == "triton":
        return True
    if backend == "reference":
        return False
    return t.is_cuda and triton_available()


def instance_norm_leaky_relu(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                             eps: float = 1e-5, negative_slope: float = 0.01, *,
                             backend: Backend = "auto") -> torch.Tensor:
    """``leaky_relu(instance_norm(x) * weight + bias)`` over ``(N, C, *spatial)``."""
    if _use_triton(x, backend):
        return load_triton_impl().instance_norm_leaky_relu_triton(x, weight, bias, eps, negative_slope)
    return instance_norm_leaky_relu_reference(x, weight, bias, eps, negative_slope)


def accumulate_patch(buffer: torch.Tensor, weight_buffer: torch.Tensor | None, logits: torch.Tensor,
                     gaussian: torch.Tensor, offset: Sequence[int], *, running_mean: bool = False,
                     backend: Backend = "auto") -> None:
    """Add ``gaussian * logits`` into ``buffer[:, offset:offset+patch]`` (and ``gaussian`` into
    ``weight_buffer``), in place, products in fp32 (for bf16/fp16 logits too).

    ``running_mean=True`` keeps the weighted *mean* instead of the sum (needs
    ``weight_buffer``): what fp16 buffers need so tiny Gaussian weights do not underflow.
    """
    if logits.dim() != buffer.dim() or logits.shape[0] != buffer.shape[0]:
        raise ValueError(f"logits {tuple(logits.shape)} do not match buffer {tuple(buffer.shape)}")
    if tuple(gaussian.shape) != tuple(logits.shape[1:]):
        raise ValueError(f"gaussian {tuple(gaussian.shape)} does not match the patch {tuple(logits.shape[1:])}")
    if running_mean and weight_buffer is None:
        raise ValueError("running_mean accumulation needs the weight buffer")
    if _use_triton(buffer, backend) and logits.dim() == 4:
        load_triton_impl().accumulate_patch_triton(buffer, weight_buffer, logits, gaussian, offset,
                                                   running_mean=running_mean)
    elif running_mean:
        accumulate_patch_mean_reference(buffer, weight_buffer, logits, gaussian, offset)
    else:
        accumulate_patch_reference(buffer, weight_buffer, logits, gaussian, offset)
