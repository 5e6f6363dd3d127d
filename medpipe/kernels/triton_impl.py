"""Triton kernels for the fused ops (imported lazily: triton is an optional extra).

Both kernels take arbitrary strides, so views (sliced buffers, channels-last tensors)
need no copies. Tested against ``reference.py`` on CPU with ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

__all__ = ["instance_norm_leaky_relu_triton", "accumulate_patch_triton"]


@triton.jit
def _in_lrelu_kernel(x_ptr, y_ptr, w_ptr, b_ptr, C, S, eps, slope,
                     HAS_AFFINE: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)  # one (sample, channel) row of S contiguous voxels
    base = row.to(tl.int64) * S
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, S, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        v = tl.load(x_ptr + base + offs, mask=offs < S, other=0.0).to(tl.float32)
        acc += v
    mean = tl.sum(acc, axis=0) / S
    acc2 = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, S, BLOCK):  # centred second pass: no catastrophic cancellation
        offs = start + tl.arange(0, BLOCK)
        m = offs < S
        v = tl.load(x_ptr + base + offs, mask=m, other=0.0).to(tl.float32)
        d = tl.where(m, v - mean, 0.0)
        acc2 += d * d
    rstd = 1.0 / tl.sqrt(tl.sum(acc2, axis=0) / S + eps)
    scale = rstd
    shift = -mean * rstd
    if HAS_AFFINE:
        c = row % C
        w = tl.load(w_ptr + c).to(tl.float32)
        b = tl.load(b_ptr + c).to(tl.float32)
        scale = rstd * w
        shift = b - mean * rstd * w
    for start in range(0, S, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        m = offs < S
        v = tl.load(x_ptr + base + offs, mask=m, other=0.0).to(tl.float32)
        y = v * scale + shift
        y = tl.where(y >= 0, y, y * slope)
        tl.store(y_ptr + base + offs, y.to(y_ptr.dtype.element_ty), mask=m)


def instance_norm_leaky_relu_triton(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                                    eps: float = 1e-5, negative_slope: float = 0.01,
                                    block: int = 1024) -> torch.Tensor:
    n, c = x.shape[:2]
    s = x[0, 0].numel()
    xc = x.contiguous()
    y = torch.empty_like(xc)
    has_affine = weight is not None and bias is not None
    w = weight.contiguous() if has_affine else xc
    b = bias.contiguous() if has_affine else xc
    block = min(block, triton.next_power_of_2(max(s, 16)))
    _in_lrelu_kernel[(n * c,)](xc, y, w, b, c, s, float(eps), float(negative_slope),
                               HAS_AFFINE=has_affine, BLOCK=block)
    return y.to(memory_format=torch.channels_last_3d) if (
        x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d)) else y


@triton.jit
def _accumulate_kernel(buf_ptr, wbuf_ptr, log_ptr, g_ptr, K, PX, PY, PZ,
                       bk, bx, by, bz, lk, lx, ly, lz, gx, gy, gz, wx, wy, wz,
                       HAS_WEIGHT: tl.constexpr, MEAN: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < PX * PY * PZ
    z = offs % PZ
    y = (offs // PZ) % PY
    x = offs // (PZ * PY)
    g = tl.load(g_ptr + x * gx + y * gy + z * gz, mask=m, other=0.0).to(tl.float32)
    b_off = x * bx + y * by + z * bz
    l_off = x * lx + y * ly + z * lz
    wp = wbuf_ptr + x * wx + y * wy + z * wz
    wv = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_WEIGHT:
        wv = tl.load(wp, mask=m, other=0.0).to(tl.float32)
    alpha = g / (wv + g)  # only used by the running-mean mode
    for k in range(K):  # gaussian loaded once, reused for every class
        lv = tl.load(log_ptr + k * lk + l_off, mask=m, other=0.0).to(tl.float32)
        bp = buf_ptr + k * bk + b_off
        bv = tl.load(bp, mask=m, other=0.0).to(tl.float32)
        if MEAN:
            nv = bv + alpha * (lv - bv)
        else:
            nv = bv + g * lv
        tl.store(bp, nv.to(buf_ptr.dtype.element_ty), mask=m)
    if HAS_WEIGHT:
        tl.store(wp, (wv + g).to(wbuf_ptr.dtype.element_ty), mask=m)


def accumulate_patch_triton(buffer: torch.Tensor, weight_buffer: torch.Tensor | None, logits: torch.Tensor,
                            gaussian: torch.Tensor, offset: Sequence[int], running_mean: bool = False,
                            block: int = 1024) -> None:
    from medpipe.kernels.reference import patch_region

    k, px, py, pz = logits.shape
    region = patch_region(offset, (px, py, pz))
    target = buffer[(slice(None), *region)]
    wt = weight_buffer[region] if weight_buffer is not None else target[0]
    grid = (triton.cdiv(px * py * pz, block),)
    _accumulate_kernel[grid](target, wt, logits, gaussian, k, px, py, pz,
                             *target.stride(), *logits.stride(), *gaussian.stride(), *wt.stride(),
                             HAS_WEIGHT=weight_buffer is not None, MEAN=running_mean, BLOCK=block)
