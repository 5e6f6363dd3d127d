"""Plain PyTorch references of the fused ops: the specification every kernel is tested against.

They are also what the CPU dispatcher runs: on this project's CPUs a hand-fused PyTorch
version was not measurably faster than ATen's instance norm (see docs/inference.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["instance_norm_leaky_relu_reference", "accumulate_patch_reference", "accumulate_patch_mean_reference",
           "patch_region"]


def instance_norm_leaky_relu_reference(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                                       eps: float = 1e-5, negative_slope: float = 0.01) -> torch.Tensor:
    """InstanceNorm (biased variance, per sample and channel over all spatial axes) then LeakyReLU."""
    y = F.instance_norm(x, weight=weight, bias=bias, eps=eps)
    return F.leaky_relu_(y, negative_slope)


def patch_region(offset: Sequence[int], size: Sequence[int]) -> tuple[slice, ...]:
    """Spatial slices of a patch of ``size`` placed at ``offset``."""
    return tuple(slice(int(o), int(o) + int(s)) for o, s in zip(offset, size, strict=True))


def accumulate_patch_reference(buffer: torch.Tensor, weight_buffer: torch.Tensor | None, logits: torch.Tensor,
                               gaussian: torch.Tensor, offset: Sequence[int]) -> None:
    """``buffer[:, region] += gaussian * logits`` and ``weight_buffer[region] += gaussian``, in place.

    ``logits`` is ``(K, *patch)`` in any float dtype; the products are formed in the
    buffer's dtype (fp32 normally), one class at a time so no ``K x patch`` temporary
    is allocated.
    """
    region = patch_region(offset, logits.shape[1:])
    target = buffer[(slice(None), *region)]
    g = gaussian.to(buffer.dtype)
    for k in range(logits.shape[0]):
        target[k].addcmul_(logits[k].to(buffer.dtype), g)
    if weight_buffer is not None:
        weight_buffer[region].add_(gaussian.to(weight_buffer.dtype))


def accumulate_patch_mean_reference(buffer: torch.Tensor, weight_buffer: torch.Tensor, logits: torch.Tensor,
                                    gaussian: torch.Tensor, offset: Sequence[int]) -> None:
    """Running weighted *mean*: ``m += g / (w + g) * (logits - m)``, ``w += g`` (``w`` kept in fp32).

    For fp16 buffers: a weighted *sum* underflows where the Gaussian is tiny (patch
    corners reach 1e-11), the running mean stays at the logits' magnitude.
    """
    region = patch_region(offset, logits.shape[1:])
    target = buffer[(slice(None), *region)]
    w = weight_buffer[region]
    g = gaussian.float()
    alpha = g / (w.float() + g)
    for k in range(logits.shape[0]):
        cur = target[k].float()
        target[k].copy_(cur.add_((logits[k].float() - cur).mul_(alpha)))
    w.add_(g.to(w.dtype))
