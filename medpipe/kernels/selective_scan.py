"""Mamba's selective scan on every device: the published recurrence, a linear-time CPU scan
with its own backward, and a dispatcher to the Triton kernel on CUDA.

The recurrence (Gu & Dao 2023), per batch ``b``, channel ``d`` and state ``n``::

    delta = softplus(delta + delta_bias)            (when asked)
    h_t   = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t   = <C_t, h_t> + D * u_t ,   out = y * silu(z)

Shapes follow the reference signature: ``u, delta, z (B, D, L)``, ``A (D, N)``,
``B, C (B, N, L)``, ``D, delta_bias (D,)``; maths in fp32, output in ``u``'s dtype.

Why our own: ``mamba_ssm`` does not import without its CUDA extension, and its PyTorch
reference indexes one time step at a time, so autograd's backward materialises a
full-length zero tensor per step (quadratic in L; 188 s for L = 4,096 here). This file's
CPU path is a custom autograd ``Function`` that is linear in L both ways:

* the sequence is cut into blocks of bounded memory; the state at each block start is
  the only thing kept from forward (plus the inputs), backward recomputes a block's states
  from it and runs the adjoint recurrence ``lam_t = C_t dy_t + a_{t+1} lam_{t+1}`` backwards;
* inside a block the scan is a Python loop over time when the block is short, else a
  two-level chunked scan: ``S`` sequential steps over all ``K = T / S`` chunks at once
  (local scans and running products), ``K`` cheap carry steps, one vectorised fix-up —
  ``O(T)`` work in about ``2 sqrt(T)`` tensor operations (chosen by length, ``LOOP_MAX_LENGTH``).

``backend``: ``auto`` (Triton on CUDA when installed, else the CPU scan), ``cpu``,
``triton`` (runs under ``TRITON_INTERPRET=1`` on CPU for tests), ``loop`` (the plain
time loop under autograd) and ``reference`` (the published form, step-indexed).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["selective_scan", "selective_scan_reference", "LOOP_MAX_LENGTH", "BLOCK_BYTES", "scan_states"]

Backend = Literal["auto", "cpu", "triton", "loop", "reference"]

LOOP_MAX_LENGTH = 48  # blocks up to this length scan with a plain loop (fewer ops than two levels)
BLOCK_BYTES = 8 * 2**20  # one (T, B, D, N) fp32 working tensor; measured: 8 MB blocks keep time per token flat
# from L = 1k to 32k (0.54 -> 0.45 ms per 1k tokens), 32 MB blocks doubled it at L >= 8k (cache misses)


def _prepare(u, delta, delta_bias, delta_softplus):
    u = u.float()
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    return u, delta


def _finish(y, u, D, z, dtype_in):
    out = y if D is None else y + u * D[:, None].float()
    if z is not None:
        out = out * F.silu(z.float())
    return out.to(dtype_in)


def selective_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                             return_last_state=False):
    """The published recurrence, one time step at a time (the specification; autograd backward)."""
    dtype_in = u.dtype
    u, delta = _prepare(u, delta, delta_bias, delta_softplus)
    A, B, C = A.float(), B.float(), C.float()
    batch, dim, n = u.shape[0], A.shape[0], A.shape[1]
    delta_a = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    delta_bu = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    h = u.new_zeros((batch, dim, n))
    ys = []
    for i in range(u.shape[2]):
        h = delta_a[:, :, i] * h + delta_bu[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, i]))
    y = torch.stack(ys, dim=2) if ys else u.new_zeros(u.shape)
    out = _finish(y, u, D, z, dtype_in)
    return (out, h) if return_last_state else out


def _loop_scan(u, delta, A, B, C):
    """The same recurrence through autograd, but with one unbind per tensor (linear backward)."""
    a = torch.exp(delta.permute(2, 0, 1)[..., None] * A)  # (L, B, D, N)
    b = (delta * u).permute(2, 0, 1)[..., None] * B.permute(2, 0, 1)[:, :, None, :]
    cs = C.permute(2, 0, 1)  # (L, B, N)
    h = a.new_zeros(a.shape[1:])
    ys = []
    for at, bt, ct in zip(a.unbind(0), b.unbind(0), cs.unbind(0), strict=True):
        h = at * h + bt
        ys.append((h * ct[:, None, :]).sum(-1))
    return torch.stack(ys, dim=2), h


# ----------------------------------------------------------------------------- linear-time CPU scan
def scan_states(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """``h_t = a_t * h_{t-1} + b_t`` along dim 0 of ``(T, ...)`` tensors from ``h0`` (``reverse``:
    ``h_t = a_t * h_{t+1} + b_t`` from the end); overwrites ``a`` and ``b`` (``b`` becomes the
    states). Loop for short T, two-level chunked scan otherwise."""
    if torch.jit.is_tracing():  # exporters (OpenVINO's converter) cannot take in-place writes into views
        return _scan_states_functional(a, b, h0, reverse)
    t_len = a.shape[0]
    if t_len <= LOOP_MAX_LENGTH:
        h = h0
        for t in (range(t_len - 1, -1, -1) if reverse else range(t_len)):
            h = torch.addcmul(b[t], a[t], h, out=b[t])
        return b
    s_len = math.isqrt(t_len - 1) + 1  # steps per chunk ~ sqrt(T)
    k = -(-t_len // s_len)
    pad = k * s_len - t_len
    if pad:  # a = 1, b = 0 past the end: states stay put (either direction)
        a = torch.cat([a, a.new_ones((pad, *a.shape[1:]))])
        b = torch.cat([b, b.new_zeros((pad, *b.shape[1:]))])
    av = a.view(k, s_len, *a.shape[1:])
    bv = b.view(k, s_len, *b.shape[1:])
    steps = range(s_len - 2, -1, -1) if reverse else range(1, s_len)
    prev = 1 if reverse else -1
    for s in steps:  # local scans of every chunk (from zero) and running products, all chunks at once
        bv[:, s].addcmul_(av[:, s], bv[:, s + prev])
        av[:, s].mul_(av[:, s + prev])
    carry = torch.empty((k, *h0.shape), dtype=b.dtype, device=b.device)
    h = h0
    edge = 0 if reverse else -1
    for i in (range(k - 1, -1, -1) if reverse else range(k)):  # state entering each chunk
        carry[i] = h
        h = torch.addcmul(bv[i, edge], av[i, edge], h)
    bv.addcmul_(av, carry[:, None])
    return bv.view(-1, *b.shape[1:])[:t_len]


def _scan_states_functional(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, reverse: bool) -> torch.Tensor:
    """``scan_states`` without in-place writes (forward direction only is needed for inference)."""
    if reverse:
        raise ValueError("the functional scan is for inference (forward direction) only")
    t_len = a.shape[0]
    if t_len <= LOOP_MAX_LENGTH:
        hs, h = [], h0
        for t in range(t_len):
            h = a[t] * h + b[t]
            hs.append(h)
        return torch.stack(hs)
    # chunks that divide T exactly: padded shapes did not survive OpenVINO's shape inference
    # (a 216-token bottleneck failed, 64 tokens worked)
    s_len = max(d for d in range(1, math.isqrt(t_len) + 1) if t_len % d == 0)
    k = t_len // s_len
    av = a.reshape(k, s_len, *a.shape[1:])
    bv = b.reshape(k, s_len, *b.shape[1:])
    loc, cum = [bv[:, 0]], [av[:, 0]]
    for s in range(1, s_len):
        loc.append(av[:, s] * loc[-1] + bv[:, s])
        cum.append(av[:, s] * cum[-1])
    local, prod = torch.stack(loc, 1), torch.stack(cum, 1)
    carries, h = [], h0
    for i in range(k):
        carries.append(h)
        h = local[i, -1] + prod[i, -1] * h
    out = local + prod * torch.stack(carries)[:, None]
    return out.reshape(-1, *b.shape[1:])


def _block_length(batch: int, dim: int, n: int, length: int) -> int:
    per_step = max(1, batch * dim * n * 4)
    return max(1, min(length, BLOCK_BYTES // per_step))


def _coefficients(u, delta, A, B, t0, t1):
    """``a = exp(delta A)`` and ``b = delta u B`` for steps [t0, t1), as (T, B, D, N)."""
    dl = delta[:, :, t0:t1].permute(2, 0, 1)[..., None]
    a = torch.exp(dl * A)
    b = (dl * u[:, :, t0:t1].permute(2, 0, 1)[..., None]) * B[:, :, t0:t1].permute(2, 0, 1)[:, :, None, :]
    return a, b


def _cpu_scan_forward(u, delta, A, B, C):
    """(y, last state, state at each block start), block by block with bounded memory."""
    batch, dim, length = u.shape
    n = A.shape[1]
    step = _block_length(batch, dim, n, length)
    ys = []
    h = u.new_zeros((batch, dim, n))
    starts = []
    for t0 in range(0, length, step):
        t1 = min(length, t0 + step)
        starts.append(h)
        a, b = _coefficients(u, delta, A, B, t0, t1)
        hs = scan_states(a, b, h)
        ys.append(_contract_n(hs, C[:, :, t0:t1]))
        h = hs[-1].clone()
    y = ys[0] if len(ys) == 1 else torch.cat(ys, dim=2)
    return y, h, starts


class _CpuScan(torch.autograd.Function):
    """``y_t = <C_t, h_t>`` of the recurrence; saves inputs + one state per block, linear backward."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C):
        y, h, starts = _cpu_scan_forward(u, delta, A, B, C)
        ctx.save_for_backward(u, delta, A, B, C, *starts)
        ctx.step = _block_length(u.shape[0], u.shape[1], A.shape[1], u.shape[2])
        return y, h

    @staticmethod
    def backward(ctx, dy, dlast):
        u, delta, A, B, C, *starts = ctx.saved_tensors
        batch, dim, length = u.shape
        step = ctx.step
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dA, dB, dC = torch.zeros_like(A), torch.empty_like(B), torch.empty_like(C)
        carry = dlast.clone() if dlast is not None else u.new_zeros((batch, dim, A.shape[1]))
        block_starts = list(range(0, length, step))
        for t0, h0 in zip(reversed(block_starts), reversed(starts), strict=True):
            t1 = min(length, t0 + step)
            a, b = _coefficients(u, delta, A, B, t0, t1)
            hs = scan_states(a.clone(), b, h0)  # states h_t of this block
            dyb = dy[:, :, t0:t1]
            bt = B[:, :, t0:t1].permute(2, 0, 1)[:, :, None, :]  # (T, B, 1, N)
            c = dyb.permute(2, 0, 1)[..., None] * C[:, :, t0:t1].permute(2, 0, 1)[:, :, None, :]  # C_t dy_t
            # adjoint lam_t = c_t + mu_{t+1} with mu_t = a_t lam_t, i.e. mu_t = a_t mu_{t+1} + a_t c_t (reverse scan)
            c[-1] += carry
            mu = scan_states(a, a * c, torch.zeros_like(h0), reverse=True)  # consumes a
            lam = c
            lam[:-1] += mu[1:]
            carry = mu[0].clone()
            g_a = mu  # d loss / d (delta * A) = mu_t * h_{t-1}
            g_a[1:] *= hs[:-1]
            g_a[0] *= h0
            dl = delta[:, :, t0:t1]
            ub = u[:, :, t0:t1]
            lam_b = _contract_n(lam, bt)  # sum_n lam * B -> (B, D, T)
            ddelta[:, :, t0:t1] = _contract_n(g_a, A[None, None]) + lam_b * ub
            du[:, :, t0:t1] = lam_b * dl
            dA += (g_a * dl.permute(2, 0, 1)[..., None]).sum((0, 1))
            dB[:, :, t0:t1] = _contract_d(lam, (dl * ub).permute(2, 0, 1))
            dC[:, :, t0:t1] = _contract_d(hs, dyb.permute(2, 0, 1))
        return du, ddelta, dA, dB, dC


def _contract_n(x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``sum_n x[t, b, d, n] * other`` -> (B, D, T); ``other`` is (B, N, T) or broadcastable to x."""
    if other.dim() == 3:
        other = other.permute(2, 0, 1)[:, :, None, :]
    return (x * other).sum(-1).permute(1, 2, 0)


def _contract_d(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``sum_d x[t, b, d, n] * w[t, b, d]`` -> (B, N, T) (a broadcast product: batched tiny matrix
    products were 4x slower here)."""
    return (x * w[..., None]).sum(2).permute(1, 2, 0)


def _use_triton(u: torch.Tensor, backend: str) -> bool:
    if backend == "triton":
        return True
    if backend != "auto" or not u.is_cuda:
        return False
    from medpipe.kernels.dispatch import triton_available

    return triton_available()


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, *, backend: Backend = "auto"):
    """The selective scan with the reference signature; see the module docstring for ``backend``.

    ``return_last_state`` also returns ``h_L`` ``(B, D, N)`` (differentiable on the CPU path)."""
    if backend not in ("auto", "cpu", "triton", "loop", "reference"):
        raise ValueError(f"backend must be auto, cpu, triton, loop or reference, got {backend!r}")
    if u.dim() != 3 or delta.shape != u.shape or B.dim() != 3 or C.dim() != 3:
        raise ValueError(f"selective_scan needs u, delta (B, D, L) and B, C (B, N, L); got u {tuple(u.shape)}, "
                         f"delta {tuple(delta.shape)}, B {tuple(B.shape)}, C {tuple(C.shape)}")
    if backend == "reference":
        return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    dtype_in = u.dtype
    u, delta = _prepare(u, delta, delta_bias, delta_softplus)
    A, B, C = A.float(), B.float(), C.float()
    if backend == "loop":
        y, last = _loop_scan(u, delta, A, B, C)
    elif _use_triton(u, backend):
        from medpipe.kernels.dispatch import load_triton_impl

        y, last = load_triton_impl_scan(load_triton_impl).apply(u, delta, A, B, C)
    elif torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, B, C)):
        y, last = _CpuScan.apply(u, delta, A, B, C)
    else:  # inference: plain tensor ops, so tracers (OpenVINO's converter) see the computation itself
        y, last, _ = _cpu_scan_forward(u, delta, A, B, C)
    out = _finish(y, u, D, z, dtype_in)
    return (out, last) if return_last_state else out


def load_triton_impl_scan(loader):
    """The Triton selective-scan autograd Function (imports triton; a clear error when missing)."""
    loader()  # raises ResourceError naming the extra when triton is not installed
    from medpipe.kernels import selective_scan_triton

    return selective_scan_triton.TritonSelectiveScan
