"""Learned registration at inference: the working grid, the network pass and optional
instance optimisation.

The network sees both images on one *working grid*: RAS axes, the bundle's spacing, the
bundle's shape (grown to a multiple of 32 when the fixed foreground is larger), centred on
the fixed image's foreground. The fixed image is resampled onto it directly, the moving
image through the affine pre-alignment, both scaled to [0, 1] by foreground percentiles.
The velocity is integrated by scaling and squaring; the deformable part is returned as a
world-mm field on the working grid, to be composed with the affine on the output grid.

Instance optimisation (``refine_iterations``; 0 = off): the integrated field is refined by
Adam on the velocity at half resolution, minimising the same local NCC (on the
full-resolution images) + diffusion the network was trained with, for this one pair. It is
the network's answer, improved by a few steps of classic optimisation (as Learn2Reg's
leading entries do), and is reported as such: its seconds are counted in every timing.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medpipe.data.deformations import normalize_intensity
from medpipe.image import Image
from medpipe.registration import spatial
from medpipe.registration.field import DisplacementField, sample_world
from medpipe.registration.losses import diffusion, fixed_ncc_sums, local_ncc

__all__ = ["ENGINES", "REFINE_OPTIONS", "working_grid", "to_working_grid", "predict_deformable", "refine_velocity"]


def working_grid(fixed: Image, spacing: float, shape: tuple[int, int, int], multiple: int = 32
                 ) -> tuple[np.ndarray, tuple[int, int, int]]:
    """(affine, shape) of the RAS grid the network runs on, centred on the fixed foreground."""
    arr = fixed.array[0]
    thr = float(np.percentile(arr, 5)) if arr.size else 0.0
    fg = np.argwhere(arr > max(thr, float(arr.min())))
    if fg.size == 0:
        fg = np.argwhere(np.ones_like(arr, dtype=bool))
    corners = np.array([[a, b, c] for a in (fg[:, 0].min(), fg[:, 0].max()) for b in (fg[:, 1].min(), fg[:, 1].max())
                        for c in (fg[:, 2].min(), fg[:, 2].max())], dtype=np.float64)
    world = fixed.world_coords(corners)
    lo, hi = world.min(axis=0), world.max(axis=0)
    extent = (hi - lo) / spacing + 1
    out = tuple(int(max(s, math.ceil(e / multiple) * multiple)) for s, e in zip(shape, extent, strict=True))
    centre = (lo + hi) / 2
    aff = np.diag([spacing, spacing, spacing, 1.0])
    aff[:3, 3] = centre - (np.asarray(out) - 1) / 2 * spacing
    return aff, out  # type: ignore[return-value]


def _grid_points(aff: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), axis=-1)
    return ijk @ aff[:3, :3].T + aff[:3, 3]


def to_working_grid(image: Image, aff: np.ndarray, shape: tuple[int, int, int],
                    matrix: np.ndarray | None = None, normalize: bool = True) -> np.ndarray:
    """``image`` (channel 0) sampled on the working grid, through ``matrix`` when given."""
    pts = _grid_points(aff, shape)
    if matrix is not None:
        pts = pts @ matrix[:3, :3].T + matrix[:3, 3]
    vol = sample_world(image.array[:1].astype(np.float32), image.affine, pts, order=1, fill=0.0)[0]
    vol = np.clip(vol, 0, None) if float(image.array.min()) >= 0 else vol - float(vol.min())
    return normalize_intensity(vol) if normalize else vol


REFINE_OPTIONS = ("lr", "smooth", "window", "loss_resolution")  # refine_velocity's tunable keywords


def refine_velocity(velocity: torch.Tensor, fixed: torch.Tensor, moving: torch.Tensor, iterations: int, *,
                    steps: int = spatial.INTEGRATION_STEPS, smooth: float = 1.0, lr: float = 0.2,
                    window: int = 9, loss_resolution: str = "full") -> torch.Tensor:
    """Instance optimisation: Adam on a half-resolution velocity initialised from the network's,
    integrated at half resolution, the image loss taken at full resolution.

    Why the full-resolution loss (``benchmarks/registration_io.py``, the registration
    benchmark's pairs): 40 steps with the loss on half-resolution images (lr 0.1, the earlier
    variant, ``loss_resolution="half"``) gave real-pair Dice 0.769 / synthetic 0.879, 10 steps
    on the full-resolution images 0.816 / 0.897: the fine edges that decide label overlap are
    averaged away on the half grid. The velocity stays on the half grid (smooth, 8x fewer
    unknowns, 8x cheaper integration). ``REFINE_OPTIONS`` names the keywords ``register``
    passes through."""
    if loss_resolution not in ("full", "half"):
        raise ValueError(f"loss_resolution must be 'full' or 'half', not {loss_resolution!r}")
    shape = tuple(velocity.shape[2:])
    half = tuple(max(8, n // 2) for n in shape)
    v = spatial.resize_field(velocity.detach(), half).clone().requires_grad_(True)
    if loss_resolution == "half":
        fixed = F.interpolate(fixed, size=half, mode="trilinear", align_corners=True)
        moving = F.interpolate(moving, size=half, mode="trilinear", align_corners=True)
    opt = torch.optim.Adam([v], lr=lr)
    sums = fixed_ncc_sums(fixed, window)
    for _ in range(iterations):
        opt.zero_grad()
        disp = spatial.integrate_velocity(v, steps)
        warped = spatial.warp(moving, spatial.resize_field(disp, tuple(fixed.shape[2:])))
        loss = local_ncc(fixed, warped, window, fixed_sums=sums) + smooth * diffusion(disp)
        loss.backward()
        opt.step()
    return spatial.resize_field(v.detach(), shape)


ENGINES = ("auto", "torch", "openvino")


def _forward(model: torch.nn.Module, f: torch.Tensor, m: torch.Tensor, engine: str, precision: str
             ) -> tuple[torch.Tensor, str]:
    """The network's velocity for one pair, and the engine that ran it.

    ``auto`` = OpenVINO on the CPU when it is installed, else torch. The shipped MICDIR on the
    registration benchmark's working grids, one thread (``benchmarks/registration_io.py``):
    torch 1.70 s, OpenVINO fp32 0.64 s (largest velocity difference 3.1e-6 voxels), bf16 0.33 s
    (0.027 voxels, the same Dice to three decimals in ``benchmarks/registration.py``). The
    compiled model is cached per working-grid shape (memory and disk), so only the first pair
    of a new shape pays the conversion."""
    x = torch.cat((f, m), dim=1)
    if engine != "torch" and f.device.type == "cpu":
        from medpipe.inference.openvino_backend import load_openvino_network, openvino_available

        if engine == "openvino" or openvino_available():
            net = load_openvino_network(model, tuple(x.shape), num_threads=torch.get_num_threads(),
                                        precision=precision)
            return net(x).clone(), f"openvino-{precision}"
    with torch.no_grad():
        return model(x), "torch"


def predict_deformable(model: torch.nn.Module, fixed: Image, moving: Image, matrix: np.ndarray, *, spacing: float,
                       shape: tuple[int, int, int], steps: int = spatial.INTEGRATION_STEPS, refine_iterations: int = 0,
                       device: str = "cpu", engine: str = "auto", precision: str = "fp32",
                       refine_options: dict[str, Any] | None = None) -> tuple[DisplacementField, dict[str, float]]:
    """The deformable part (working grid, world mm) and timings of the network (+ refinement);
    ``field.meta["engine"]`` says what ran the network (see ``_forward``)."""
    import time

    aff, grid_shape = working_grid(fixed, spacing, shape)
    f = torch.from_numpy(to_working_grid(fixed, aff, grid_shape))[None, None].to(device)
    m = torch.from_numpy(to_working_grid(moving, aff, grid_shape, matrix))[None, None].to(device)
    t0 = time.perf_counter()
    vel, ran_on = _forward(model, f, m, engine, precision)
    t1 = time.perf_counter()
    if refine_iterations > 0:
        with torch.enable_grad():
            vel = refine_velocity(vel, f, m, refine_iterations, steps=steps, **(refine_options or {}))
    t2 = time.perf_counter()
    with torch.no_grad():
        disp = spatial.exp_field(vel, steps)
    t3 = time.perf_counter()
    field = DisplacementField.from_voxel(disp.cpu(), aff)
    field.meta["working_grid"] = {"shape": list(grid_shape), "spacing": spacing}
    field.meta["engine"] = ran_on
    return field, {"network_s": t1 - t0, "refine_s": t2 - t1, "integrate_s": t3 - t2}
