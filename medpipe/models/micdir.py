"""MICDIR: multi-scale inverse-consistent deformable registration with a self-constructing
graph latent (Chatterjee et al. 2022, arXiv:2203.04317), our own implementation.

Input ``cat(fixed, moving)`` ``(B, 2C, I, J, K)``; output a stationary velocity field
``(B, 3, I, J, K)`` in voxel units whose exponential (scaling and squaring, 7 steps)
pulls the moving image onto the fixed grid. Structure as published:

* encoder: six 3³ convs without bias, each + LeakyReLU(0.2), widths 16, 32, 32, 32, 32, 32,
  all but the first strided by 2 (so inputs are divisible by 32);
* self-constructing graph (SCG) on the deepest features: a 4³ average pool gives 64 nodes
  (``nodes=None``: one node per bottleneck voxel instead, see below);
  node embeddings ``mu`` (3³ conv) and ``log_var`` (1³ conv) build a learned adjacency
  ``A = LeakyReLU(z zᵀ)`` (z sampled in training, ``mu`` in eval), normalised with self
  loops; its KL + diagonal-likelihood regulariser is the *graph loss*;
* two GCN layers (Linear + BatchNorm + LeakyReLU + dropout, 32 → 16 → 9) over ``A``, plus
  the SCG's residual embedding, reshaped back to a 9-channel 4³ volume;
* decoder: upsample, concatenate the encoder feature of that scale, 3³ conv + LeakyReLU, up
  to full resolution; a *half-resolution* velocity head after the 1/2 scale and a
  full-resolution head after concatenating the fixed image (3 convs 33 → 16 → 16 → 3).

Deviations from the official code, on purpose: the GCN output is permuted ``(B, N, C) →
(B, C, N)`` before being reshaped to a volume (the official raw reshape scrambles nodes
and channels); the last conv of each velocity head is linear and initialised near zero
(N(0, 1e-5), as VoxelMorph does) instead of LeakyReLU, so training starts at the identity
and negative velocities are not damped; velocity is predicted in voxel units of the
input grid. ``nodes=None`` (not in the paper) drops the pool: at the published 128³ input the
bottleneck *is* 4³, but a 48³ training crop leaves 2³ (pooled *up* to 4³, each node copied 8
times) and the 96³ inference grid 3³, so a net trained on crops saw other graph statistics
than it meets at inference (measured: it got worse on the 96³ grid while improving on crops,
docs/registration.md). Without the pool a node is always one 32-voxel region and the GCN, whose
weights act per node, runs on any number of them (inputs under 64 voxels along an axis still
get 2 nodes there). ``graph_norm=True`` (not in the paper either) normalises the GCN layers
with each graph's own node statistics at inference too, instead of BatchNorm's running averages: measured on a
96³ validation grid after 50 training steps on 64³ crops, the running averages (gathered on
crops that are mostly brain, applied to a grid with a wide background margin) made the
endpoint error 6.26 mm against 2.89 mm for no registration at all; the graph's own statistics
gave 3.00, on crops 2.57 (the training recipe sets both options). Losses (symmetric local
NCC, diffusion, graph, cycle) live in :mod:`medpipe.registration.losses`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medpipe.models.registry import register_model, with_task

__all__ = ["ConvAct", "SelfConstructingGraph", "GCNLayer", "UpFuse", "MICDIR", "micdir"]


class ConvAct(nn.Sequential):
    """3³ convolution (no bias, as published) + LeakyReLU(0.2)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__(nn.Conv3d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False), nn.LeakyReLU(0.2))


class SelfConstructingGraph(nn.Module):
    """SCG block (Liu et al. 2020): pooled nodes, a learned adjacency and its regulariser."""

    def __init__(self, in_ch: int, hidden: int = 9, nodes: Sequence[int] | None = (4, 4, 4), dropout: float = 0.2):
        super().__init__()
        # None: one node per bottleneck voxel (no pooling), so a node always stands for the same
        # 32-voxel region whatever the input size (the graph just has more nodes on a bigger grid)
        self.node_shape: tuple[int, ...] | None = None if nodes is None else tuple(int(n) for n in nodes)
        self.n_nodes = math.prod(self.node_shape) if self.node_shape else 0
        self.hidden = hidden
        self.mu = nn.Sequential(nn.Conv3d(in_ch, hidden, 3, padding=1), nn.Dropout(dropout))
        self.log_var = nn.Sequential(nn.Conv3d(in_ch, hidden, 1), nn.Dropout(dropout))
        self.act = nn.LeakyReLU(0.2)

    def node_grid(self, bottleneck: Sequence[int]) -> tuple[int, ...]:
        """The node lattice for a bottleneck of this size (the fixed one, or the bottleneck's own,
        at least 2 per axis: one node alone has no graph and no batch statistics)."""
        return self.node_shape or tuple(max(2, int(n)) for n in bottleneck)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(normalised adjacency (B, N, N), node features (B, N, C), graph loss, residual (B, N, hidden))."""
        b = x.shape[0]
        grid = self.node_grid(x.shape[2:])
        pooled = x if grid == tuple(x.shape[2:]) else F.adaptive_avg_pool3d(x, grid)
        n_nodes = math.prod(grid)
        mu = self.mu(pooled).flatten(2).transpose(1, 2)  # (B, N, hidden)
        log_var = self.log_var(pooled).flatten(2).transpose(1, 2)
        z = mu + torch.exp(log_var) * torch.randn_like(mu) if self.training else mu
        adj = self.act(z @ z.transpose(1, 2))
        # diagonal by masking (not torch.diagonal / diag_embed: OpenVINO has no rule for them)
        eye = torch.eye(n_nodes, device=x.device, dtype=x.dtype)
        diag = (adj * eye).sum(dim=-1)  # (B, N), >= 0
        gamma = torch.sqrt(1.0 + 1.0 / (diag.mean(dim=1) + 1e-6)).view(b, 1, 1)
        small = diag[diag < 1]
        diag_ll = gamma.mean() * torch.log(small + 1e-7).sum() / (b * n_nodes * n_nodes)
        kl = -0.5 / n_nodes * torch.mean(torch.sum(1 + 2 * log_var - mu.pow(2) - log_var.exp().pow(2), dim=1))
        adj = adj + gamma * (adj * eye) + eye
        deg = (adj.sum(dim=1) + 1e-5).pow(-0.5)
        adj = deg.unsqueeze(-1) * adj * deg.unsqueeze(-2)
        residual = gamma.mean() * mu * (1.0 - log_var)
        return adj, pooled.flatten(2).transpose(1, 2), kl - diag_ll, residual


class GCNLayer(nn.Module):
    """``y = Dropout(LeakyReLU(BN(Linear(A x))))`` over graph nodes ``(B, N, C)``."""

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.1, graph_norm: bool = False):
        super().__init__()
        self.fc = nn.Linear(in_features, out_features)
        # graph_norm: statistics of this graph's own nodes in training *and* inference (no running
        # averages); same weights, so the parameter count is the published one
        self.norm = nn.BatchNorm1d(out_features, track_running_stats=not graph_norm)
        self.act = nn.LeakyReLU(0.2)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        y = self.fc(adj @ x)
        y = self.norm(y.transpose(1, 2)).transpose(1, 2)
        return self.drop(self.act(y))


class UpFuse(nn.Module):
    """Trilinear upsampling to the skip's size, concatenation, 3³ conv + LeakyReLU."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int):
        super().__init__()
        self.conv = ConvAct(in_ch + skip_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=False)
        return self.conv(torch.cat((x, skip), dim=1))


def _flow_head(in_ch: int, widths: Sequence[int], out_ch: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers.append(ConvAct(in_ch, w))
        in_ch = w
    last = nn.Conv3d(in_ch, out_ch, 3, padding=1)
    nn.init.normal_(last.weight, std=1e-5)
    nn.init.zeros_(last.bias)
    layers.append(last)
    return nn.Sequential(*layers)


class MICDIR(nn.Module):
    """The MICDIR network; ``forward`` gives the full-resolution velocity field.

    ``in_channels`` = channels of ``cat(fixed, moving)`` (2 for one-channel images);
    ``num_classes`` = velocity components (3 for 3D use; the registry builds other values).
    """

    is_registration = True

    def __init__(self, in_channels: int = 2, num_classes: int = 3, *,
                 encoder: Sequence[int] = (16, 32, 32, 32, 32, 32), decoder: Sequence[int] = (32, 32, 32, 32, 32),
                 nodes: Sequence[int] | None = (4, 4, 4), graph_hidden: int = 9, gcn: Sequence[int] = (16, 9),
                 head: Sequence[int] = (16, 16), graph_norm: bool = False, spatial_dims: int = 3):
        super().__init__()
        if spatial_dims != 3:
            raise ValueError(f"MICDIR is a 3D network, spatial_dims must be 3, not {spatial_dims}")
        if len(encoder) != 6 or len(decoder) != 5:
            raise ValueError("MICDIR has six encoder convs and five decoder fusions")
        if gcn[-1] != graph_hidden:
            raise ValueError(f"the last GCN width ({gcn[-1]}) must equal graph_hidden ({graph_hidden})")
        self.in_channels, self.num_classes, self.spatial_dims = in_channels, num_classes, 3
        self.fixed_channels = max(1, in_channels // 2)
        self.input_shape_must_be_divisible_by = [32, 32, 32]
        enc = list(encoder)
        self.encoder = nn.ModuleList([ConvAct(in_channels, enc[0])]
                                     + [ConvAct(enc[i - 1], enc[i], stride=2) for i in range(1, 6)])
        # not ``self.graph``: TorchScript modules and fx graph modules have their own ``graph``
        # attribute, so a submodule of that name broke both exporters (OpenVINO's trace and
        # ``torch.export``)
        self.scg = SelfConstructingGraph(enc[5], graph_hidden, nodes)
        widths = [enc[5], *gcn]
        self.gcn = nn.ModuleList([GCNLayer(widths[i], widths[i + 1], graph_norm=graph_norm) for i in range(len(gcn))])
        dec = list(decoder)
        ins = [graph_hidden, *dec[:-1]]
        skips = [enc[4], enc[3], enc[2], enc[1], enc[0]]
        self.decoder = nn.ModuleList([UpFuse(ins[i], skips[i], dec[i]) for i in range(5)])
        self.head_full = _flow_head(dec[4] + self.fixed_channels, head, num_classes)
        self.head_half = _flow_head(dec[3], head, num_classes)
        for m in (*self.gcn, self.scg):
            for mod in m.modules():
                if isinstance(mod, nn.Linear):
                    nn.init.orthogonal_(mod.weight)
                    nn.init.zeros_(mod.bias)

    def forward_train(self, x: torch.Tensor, half_head: bool = True) -> dict[str, torch.Tensor]:
        """``velocity`` (full res), ``velocity_half`` (half res; only with ``half_head``, a
        training-only term) and the scalar ``graph_loss``."""
        feats = []
        h = x
        for conv in self.encoder:
            h = conv(h)
            feats.append(h)
        adj, nodes, graph_loss, residual = self.scg(feats[5])
        g = nodes
        for layer in self.gcn:
            g = layer(g, adj)
        g = adj @ g + residual  # (B, N, hidden)
        g = g.transpose(1, 2).reshape(x.shape[0], -1, *self.scg.node_grid(feats[5].shape[2:]))
        g = F.interpolate(g, size=feats[5].shape[2:], mode="trilinear", align_corners=False)
        half = None
        for i, fuse in enumerate(self.decoder):
            g = fuse(g, feats[4 - i])
            if i == 3:
                half = g
        full = self.head_full(torch.cat((x[:, : self.fixed_channels], g), dim=1))
        out = {"velocity": full, "graph_loss": graph_loss}
        if half_head:
            out["velocity_half"] = self.head_half(half)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_train(x, half_head=False)["velocity"]


@register_model
@with_task("registration")
def micdir(**cfg) -> MICDIR:
    """MICDIR as published (encoder 16, 32×5; 64 graph nodes; full + half resolution velocity heads)."""
    return MICDIR(**cfg)
