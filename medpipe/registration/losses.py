"""Registration losses: local NCC, diffusion smoothness, symmetric and cycle terms, MICDIR's total.

Local NCC is VoxelMorph's windowed definition (window 9³, box sums by running sums, the
squared correlation ``cross² / (var_f var_m)`` averaged over voxels) and is returned
*negated*, so every term here is minimised. Diffusion = mean squared forward difference
of the field (VoxelMorph's ``Grad('l2')``). The cycle term is MICDIR's inverse
consistency: composing the two directions of one pair should give the identity. The optional
supervised term (not in MICDIR; ``LossWeights.supervised``) is the squared endpoint error
against the known field of a synthetic pair: a dense signal that NCC alone gives only
slowly, which matters when training has a CPU hour.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medpipe.registration import spatial

__all__ = ["local_ncc", "fixed_ncc_sums", "diffusion", "cycle_consistency", "LossWeights", "pair_losses"]


def _box_sum(t: torch.Tensor, window: int) -> torch.Tensor:
    """``window``³ box sum per channel (zero padding) by running sums along each axis: two
    reads per voxel and axis whatever the window. Why not convolutions (VoxelMorph's way, and
    ours before): on the CPU the three separable depthwise ``conv3d`` fell partly to PyTorch's
    slow path, and with their backward they were 70 % of an instance-optimisation step — 0.25 s
    against 0.085 s here for three 96³ maps, forward + backward, one thread (an ad-hoc timing;
    the recorded effect is ``benchmarks/registration_io.py``'s refine seconds). float32 running
    sums along a 96-voxel line differ from the convolution by < 1e-6 relative; windows that
    hold only zeros stay exactly zero (equal running sums), so flat background adds no noise."""
    pad = window // 2
    for axis in (2, 3, 4):
        n = t.shape[axis]
        widths = [0, 0] * (t.dim() - 2)
        widths[2 * (t.dim() - 1 - axis)], widths[2 * (t.dim() - 1 - axis) + 1] = pad + 1, pad
        run = torch.cumsum(F.pad(t, widths), dim=axis)
        t = run.narrow(axis, window, n) - run.narrow(axis, 0, n)
    return t


def fixed_ncc_sums(fixed: torch.Tensor, window: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed image's box sums (of f and f²) that ``local_ncc`` needs: constant while only
    the warp changes (instance optimisation), so computed once there."""
    s_f, s_ff = _box_sum(torch.cat((fixed, fixed * fixed), dim=1), window).split(fixed.shape[1], dim=1)
    return s_f, s_ff


def local_ncc(fixed: torch.Tensor, warped: torch.Tensor, window: int = 9, eps: float = 1e-5,
              fixed_sums: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Negative mean local squared NCC over ``window``³ neighbourhoods (−1 = perfect);
    ``fixed_sums`` = ``fixed_ncc_sums(fixed, window)`` when already at hand."""
    c = fixed.shape[1]
    n = float(window**3)
    # the maps as channels of one tensor, three depthwise convolutions each (not fifteen
    # convolutions); the fixed image's two apart, outside the warped maps' backward pass
    s_f, s_ff = fixed_ncc_sums(fixed, window) if fixed_sums is None else fixed_sums
    s_m, s_mm, s_fm = _box_sum(torch.cat((warped, warped * warped, fixed * warped), dim=1), window).split(c, dim=1)
    cross = s_fm - s_f * s_m / n
    var_f = s_ff - s_f * s_f / n
    var_m = s_mm - s_m * s_m / n
    cc = cross * cross / (var_f * var_m + eps)
    return -cc.mean()


def diffusion(disp: torch.Tensor) -> torch.Tensor:
    """Mean squared forward difference of the field along each axis, averaged (voxel units)."""
    terms = [(disp.diff(dim=d) ** 2).mean() for d in (2, 3, 4)]
    return sum(terms) / 3.0


def cycle_consistency(forward: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
    """Mean squared residual of φ_xy∘φ_yx (and φ_yx∘φ_xy) against the identity, voxels²."""
    a = spatial.compose(forward, backward)
    b = spatial.compose(backward, forward)
    return 0.5 * ((a**2).sum(dim=1).mean() + (b**2).sum(dim=1).mean())


@dataclass(frozen=True)
class LossWeights:
    """MICDIR's weights (official training script: 1.2 NCC, 1.0 smoothness, 1.0 graph, half-scale 0.5 / 0.5)."""

    ncc: float = 1.2
    smooth: float = 1.0
    graph: float = 1.0
    half_ncc: float = 0.5
    half_smooth: float = 0.5
    cycle: float = 0.1
    # not MICDIR's: squared endpoint error (voxels²) against the known field of a synthetic pair;
    # 0 = the published unsupervised objective
    supervised: float = 0.0
    window: int = 9
    steps: int = spatial.INTEGRATION_STEPS
    downsize: int = 2  # integrate at half resolution (MICDIR's and VoxelMorph's int_downsize)


def _direction(model, fixed: torch.Tensor, moving: torch.Tensor, w: LossWeights,
               truth: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    out = model.forward_train(torch.cat((fixed, moving), dim=1))
    disp = spatial.exp_field(out["velocity"], w.steps, w.downsize)
    res = {"disp": disp, "ncc": local_ncc(fixed, spatial.warp(moving, disp), w.window), "smooth": diffusion(disp)}
    if truth is not None and w.supervised > 0:
        res["supervised"] = ((disp - truth) ** 2).sum(dim=1).mean()
    if "velocity_half" in out:
        half = out["velocity_half"]
        f_half = F.interpolate(fixed, size=half.shape[2:], mode="trilinear", align_corners=True)
        m_half = F.interpolate(moving, size=half.shape[2:], mode="trilinear", align_corners=True)
        d_half = spatial.exp_field(half, w.steps, w.downsize)
        res["half_ncc"] = local_ncc(f_half, spatial.warp(m_half, d_half), w.window)
        res["half_smooth"] = diffusion(d_half)
    if "graph_loss" in out:
        res["graph"] = out["graph_loss"]
    return res


def pair_losses(model, fixed: torch.Tensor, moving: torch.Tensor, w: LossWeights = LossWeights(),
                symmetric: bool = True, truth: tuple[torch.Tensor | None, torch.Tensor | None] | None = None
                ) -> dict[str, torch.Tensor]:
    """MICDIR's objective for one batch: both directions with shared weights (``symmetric``),
    half-resolution terms when the model has that head, graph loss, cycle consistency; with
    ``truth`` (the known fixed->moving and moving->fixed pull-backs of a synthetic pair, voxels)
    and ``w.supervised`` > 0, also their squared endpoint error.

    Returns every term (detached values for logging) and ``total`` (to backpropagate).
    """
    t_xy, t_yx = truth if truth is not None else (None, None)
    xy = _direction(model, fixed, moving, w, t_xy)
    dirs = [xy]
    if symmetric:
        dirs.append(_direction(model, moving, fixed, w, t_yx))
    weights = {"ncc": w.ncc, "smooth": w.smooth, "graph": w.graph, "half_ncc": w.half_ncc,
               "half_smooth": w.half_smooth, "supervised": w.supervised}
    total = torch.zeros((), dtype=fixed.dtype, device=fixed.device)
    terms: dict[str, torch.Tensor] = {}
    for key, weight in weights.items():
        vals = [d[key] for d in dirs if key in d]
        if vals:
            v = sum(vals) / len(vals)
            terms[key] = v.detach()
            total = total + weight * v
    if symmetric and w.cycle > 0:
        cyc = cycle_consistency(xy["disp"], dirs[1]["disp"])
        terms["cycle"] = cyc.detach()
        total = total + w.cycle * cyc
    terms["total"] = total
    terms["disp"] = xy["disp"].detach()
    return terms
