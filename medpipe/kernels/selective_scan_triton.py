"""Triton kernels for the selective scan (forward and backward) and the causal depthwise conv1d.

Imported lazily (triton is the optional ``medpipe[triton]`` extra). One program per
(batch, block of channels) walks the sequence keeping its ``(BLOCK_D, N)`` state in
registers — the structure of Mamba's CUDA kernel. Forward writes the state at the start
of every ``CHUNK`` steps; backward walks the chunks last to first, recomputes a chunk's
states into a small scratch buffer from that checkpoint, then runs the adjoint recurrence
backwards through it. Reductions over channels (dB, dC) are written per channel block and
summed by PyTorch (deterministic; no atomics). Tested against ``selective_scan_reference``
under ``TRITON_INTERPRET=1`` (values and gradients, odd lengths and widths).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["TritonSelectiveScan", "causal_conv1d_triton"]

CHUNK = 32


@triton.jit
def _scan_fwd(u_ptr, dt_ptr, a_ptr, b_ptr, c_ptr, y_ptr, ck_ptr, last_ptr, D, N, L, NCHUNK,
              CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    pb = tl.program_id(0)
    pd = tl.program_id(1)
    d = pd * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    md = d < D
    mn = n < N
    m2 = md[:, None] & mn[None, :]
    A = tl.load(a_ptr + d[:, None] * N + n[None, :], mask=m2, other=0.0)
    h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    row = pb * D * L + d * L
    for t in range(0, L):
        if t % CHUNK == 0:
            ck = ((pb * NCHUNK + t // CHUNK) * D + d[:, None]) * N + n[None, :]
            tl.store(ck_ptr + ck, h, mask=m2)
        u = tl.load(u_ptr + row + t, mask=md, other=0.0)
        dt = tl.load(dt_ptr + row + t, mask=md, other=0.0)
        bt = tl.load(b_ptr + pb * N * L + n * L + t, mask=mn, other=0.0)
        ct = tl.load(c_ptr + pb * N * L + n * L + t, mask=mn, other=0.0)
        h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * bt[None, :]
        y = tl.sum(h * ct[None, :], axis=1)
        tl.store(y_ptr + row + t, y, mask=md)
    tl.store(last_ptr + (pb * D + d[:, None]) * N + n[None, :], h, mask=m2)


@triton.jit
def _scan_bwd(u_ptr, dt_ptr, a_ptr, b_ptr, c_ptr, dy_ptr, ck_ptr, dlast_ptr, scratch_ptr,
              du_ptr, ddt_ptr, da_ptr, db_ptr, dc_ptr, D, N, L, NCHUNK, NDB,
              CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    pb = tl.program_id(0)
    pd = tl.program_id(1)
    d = pd * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    md = d < D
    mn = n < N
    m2 = md[:, None] & mn[None, :]
    A = tl.load(a_ptr + d[:, None] * N + n[None, :], mask=m2, other=0.0)
    row = pb * D * L + d * L
    state = (pb * D + d[:, None]) * N + n[None, :]
    lam_next = tl.load(dlast_ptr + state, mask=m2, other=0.0)  # a_{t+1} lam_{t+1}, starting with dlast
    da_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    # this program's scratch: CHUNK + 1 states of (BLOCK_D, BLOCK_N)
    sbase = ((pb * tl.num_programs(1) + pd) * (CHUNK + 1)) * BLOCK_D * BLOCK_N
    loc = tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + n[None, :]
    red = (pb * NDB + pd) * N * L + n * L  # partial sums over this channel block
    for cc in range(0, NCHUNK):
        c = NCHUNK - 1 - cc
        t0 = c * CHUNK
        t1 = tl.minimum(t0 + CHUNK, L)
        h = tl.load(ck_ptr + ((pb * NCHUNK + c) * D + d[:, None]) * N + n[None, :], mask=m2, other=0.0)
        tl.store(scratch_ptr + sbase + loc, h)
        for t in range(t0, t1):  # recompute this chunk's states
            u = tl.load(u_ptr + row + t, mask=md, other=0.0)
            dt = tl.load(dt_ptr + row + t, mask=md, other=0.0)
            bt = tl.load(b_ptr + pb * N * L + n * L + t, mask=mn, other=0.0)
            h = tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * bt[None, :]
            tl.store(scratch_ptr + sbase + (t - t0 + 1) * BLOCK_D * BLOCK_N + loc, h)
        for tt in range(t0, t1):  # adjoint, backwards in time
            t = t1 - 1 - (tt - t0)
            u = tl.load(u_ptr + row + t, mask=md, other=0.0)
            dt = tl.load(dt_ptr + row + t, mask=md, other=0.0)
            dy = tl.load(dy_ptr + row + t, mask=md, other=0.0)
            bt = tl.load(b_ptr + pb * N * L + n * L + t, mask=mn, other=0.0)
            ct = tl.load(c_ptr + pb * N * L + n * L + t, mask=mn, other=0.0)
            h_t = tl.load(scratch_ptr + sbase + (t - t0 + 1) * BLOCK_D * BLOCK_N + loc)
            h_p = tl.load(scratch_ptr + sbase + (t - t0) * BLOCK_D * BLOCK_N + loc)
            lam = dy[:, None] * ct[None, :] + lam_next
            lam = tl.where(m2, lam, 0.0)
            a = tl.exp(dt[:, None] * A)
            g_a = lam * h_p * a
            lam_b = tl.sum(lam * bt[None, :], axis=1)
            tl.store(ddt_ptr + row + t, tl.sum(g_a * A, axis=1) + lam_b * u, mask=md)
            tl.store(du_ptr + row + t, lam_b * dt, mask=md)
            da_acc += g_a * dt[:, None]
            tl.store(db_ptr + red + t, tl.sum(lam * (dt * u)[:, None], axis=0), mask=mn)
            tl.store(dc_ptr + red + t, tl.sum(tl.where(m2, h_t, 0.0) * dy[:, None], axis=0), mask=mn)
            lam_next = a * lam
    tl.store(da_ptr + state, da_acc, mask=m2)


def _blocks(dim: int, n: int) -> tuple[int, int]:
    block_n = triton.next_power_of_2(max(n, 1))
    block_d = min(64, triton.next_power_of_2(max(dim, 1)))
    return block_d, block_n


class TritonSelectiveScan(torch.autograd.Function):
    """``(u, delta, A, B, C) -> (y, last_state)`` with ``y_t = <C_t, h_t>`` (fp32, contiguous)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C):
        u, delta, A, B, C = (t.contiguous().float() for t in (u, delta, A, B, C))
        batch, dim, length = u.shape
        n = A.shape[1]
        block_d, block_n = _blocks(dim, n)
        nchunk = max(1, triton.cdiv(length, CHUNK))
        y = torch.empty_like(u)
        ck = torch.empty((batch, nchunk, dim, n), device=u.device, dtype=torch.float32)
        last = torch.empty((batch, dim, n), device=u.device, dtype=torch.float32)
        grid = (batch, triton.cdiv(dim, block_d))
        _scan_fwd[grid](u, delta, A, B, C, y, ck, last, dim, n, length, nchunk,
                        CHUNK=CHUNK, BLOCK_D=block_d, BLOCK_N=block_n)
        ctx.save_for_backward(u, delta, A, B, C, ck)
        return y, last

    @staticmethod
    def backward(ctx, dy, dlast):
        u, delta, A, B, C, ck = ctx.saved_tensors
        batch, dim, length = u.shape
        n = A.shape[1]
        block_d, block_n = _blocks(dim, n)
        nchunk = ck.shape[1]
        ndb = triton.cdiv(dim, block_d)
        dy = dy.contiguous().float()
        dlast = (dlast if dlast is not None else torch.zeros_like(ck[:, 0])).contiguous().float()
        scratch = torch.empty((batch * ndb * (CHUNK + 1) * block_d * block_n,), device=u.device, dtype=torch.float32)
        du, ddelta = torch.empty_like(u), torch.empty_like(u)
        da = torch.empty((batch, dim, n), device=u.device, dtype=torch.float32)
        db = torch.empty((batch, ndb, n, length), device=u.device, dtype=torch.float32)
        dc = torch.empty_like(db)
        _scan_bwd[(batch, ndb)](u, delta, A, B, C, dy, ck, dlast, scratch, du, ddelta, da, db, dc,
                                dim, n, length, nchunk, ndb, CHUNK=CHUNK, BLOCK_D=block_d, BLOCK_N=block_n)
        return du, ddelta, da.sum(0), db.sum(1), dc.sum(1)


@triton.jit
def _conv1d_fwd(x_ptr, w_ptr, b_ptr, y_ptr, D, L, K: tl.constexpr, SILU: tl.constexpr, HAS_BIAS: tl.constexpr,
                BLOCK_L: tl.constexpr):
    row = tl.program_id(0)  # one (batch, channel) row
    pl = tl.program_id(1)
    d = row % D
    t = pl * BLOCK_L + tl.arange(0, BLOCK_L)
    acc = tl.zeros([BLOCK_L], dtype=tl.float32)
    for j in range(K):  # y_t = sum_j w_j x_{t - (K - 1) + j}: causal, zero before the start
        src = t - (K - 1) + j
        x = tl.load(x_ptr + row * L + src, mask=(src >= 0) & (t < L), other=0.0).to(tl.float32)
        acc += x * tl.load(w_ptr + d * K + j).to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + d).to(tl.float32)
    if SILU:
        acc = acc / (1.0 + tl.exp(-acc))
    tl.store(y_ptr + row * L + t, acc, mask=t < L)


def causal_conv1d_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu: bool,
                         block: int = 256) -> torch.Tensor:
    """Forward of conv + bias + SiLU in one pass over ``x`` (B, D, L); fp32 output."""
    xc = x.contiguous().float()
    batch, dim, length = xc.shape
    w = weight.reshape(dim, -1).contiguous().float()
    y = torch.empty_like(xc)
    block = min(block, triton.next_power_of_2(max(length, 16)))
    grid = (batch * dim, triton.cdiv(length, block))
    _conv1d_fwd[grid](xc, w, bias.contiguous().float() if bias is not None else w, y, dim, length, K=w.shape[1],
                      SILU=silu, HAS_BIAS=bias is not None, BLOCK_L=block)
    return y
