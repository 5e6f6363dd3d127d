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

_TEMPORARY_BYTES = 32 * 2**20  # bound on the per-step fp32 temporary of the chunked paths


def instance_norm_leaky_relu_reference(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                                       eps: float = 1e-5, negative_slope: float = 0.01) -> torch.Tensor:
    """InstanceNorm (biased variance, per sample and channel over all spatial axes) then LeakyReLU."""
    y = F.instance_norm(x, weight=weight, bias=bias, eps=eps)
    return F.leaky_relu_(y, negative_slope)


def patch_region(offset: Sequence[int], size: Sequence[int]) -> tuple[slice, ...]:
    """Spatial slices of a patch of ``size`` placed at ``offset``."""
    return tuple(slice(int(o), int(o) + int(s)) for o, s in zip(offset, size, strict=True))


def _class_chunk(n_classes: int, patch_voxels: int) -> int:
    """Classes per step so a temporary of ``chunk x patch`` fp32 values stays <= ~32 MB."""
    return max(1, min(n_classes, _TEMPORARY_BYTES // (4 * max(1, patch_voxels))))


def accumulate_patch_reference(buffer: torch.Tensor, weight_buffer: torch.Tensor | None, logits: torch.Tensor,
                               gaussian: torch.Tensor, offset: Sequence[int]) -> None:
    """``buffer[:, region] += gaussian * logits`` and ``weight_buffer[region] += gaussian``, in place.

    ``logits`` is ``(K, *patch)`` in any float dtype; the products are formed in the
    buffer's dtype (fp32 normally). All classes go through one broadcast ``addcmul_``
    (no temporary) when the dtypes match; otherwise a few classes at a time are cast,
    which bounds the temporary (a per-class loop made 105-class stitching slower than
    the network).
    """
    region = patch_region(offset, logits.shape[1:])
    target = buffer[(slice(None), *region)]
    g = gaussian.to(buffer.dtype)
    if logits.dtype == buffer.dtype:
        target.addcmul_(logits, g)
    else:
        step = _class_chunk(logits.shape[0], g.numel())
        for k0 in range(0, logits.shape[0], step):
            target[k0:k0 + step].addcmul_(logits[k0:k0 + step].to(buffer.dtype), g)
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
    step = _class_chunk(logits.shape[0], g.numel())
    for k0 in range(0, logits.shape[0], step):  # a few classes per step, fp32 maths: m = lerp(m, x, alpha)
        cur = target[k0:k0 + step].float()
        target[k0:k0 + step].copy_(cur.lerp_(logits[k0:k0 + step].float(), alpha))
    w.add_(g.to(w.dtype))
