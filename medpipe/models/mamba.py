"""The Mamba block (Gu & Dao 2023) with ``mamba_ssm``'s parameter names, runnable on any device.

Why our own: ``mamba_ssm`` cannot be imported without its CUDA extension, so U-Mamba's
official code does not even start on a CPU. This module has the same parameters under the
same names (``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj``) and
the same initialisation (S4D-real ``A_n = n``, ``dt`` log-uniform in [1e-3, 0.1] through an
inverse-softplus bias, ``dt_proj`` weights uniform in ``+-dt_rank^-0.5``, ``D = 1``), so an
official state dict loads as is; the maths goes through ``medpipe.kernels``: the causal
depthwise conv1d and the selective scan (linear-time CPU scan, Triton on CUDA).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medpipe.kernels.causal_conv1d import causal_conv1d
from medpipe.kernels.selective_scan import selective_scan

__all__ = ["Mamba"]


class Mamba(nn.Module):
    """``(B, L, d_model) -> (B, L, d_model)``: in_proj -> causal conv1d + SiLU -> selective scan
    gated by SiLU(z) -> out_proj (no residual, no norm: the caller adds what it wants)."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | str = "auto", dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False):
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = int(d_model), d_state, d_conv, expand
        self.d_inner = int(expand * self.d_model)
        self.dt_rank = math.ceil(self.d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.in_proj = nn.Linear(self.d_model, self.d_inner * 2, bias=bias)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1,
                                bias=conv_bias)
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        std = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(a))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, self.d_model, bias=bias)
        self.scan_backend = "auto"

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        length = hidden.shape[1]
        xz = self.in_proj(hidden).transpose(1, 2)  # (B, 2 d_inner, L)
        x, z = xz.chunk(2, dim=1)
        x = causal_conv1d(x, self.conv1d.weight, self.conv1d.bias, "silu")
        x_dbl = self.x_proj(x.transpose(1, 2))  # (B, L, dt_rank + 2N)
        dt, b, c = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # (B, d_inner, L); bias goes in as delta_bias
        a = -torch.exp(self.A_log.float())
        y = selective_scan(x, dt, a, b.transpose(1, 2), c.transpose(1, 2), self.D.float(), z=z,
                           delta_bias=self.dt_proj.bias.float(), delta_softplus=True, backend=self.scan_backend)
        assert y.shape[-1] == length
        return self.out_proj(y.transpose(1, 2))
