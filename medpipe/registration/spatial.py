"""Dense displacement fields on voxel grids: warping, scaling and squaring, composition, inversion.

Everything here works on torch tensors laid out like ``Image.array``: a moving image
``(B, C, I, J, K)`` and a displacement ``(B, 3, I, J, K)`` in *voxel units of the grid it
lives on*, channel ``a`` along array axis ``a``. A displacement ``u`` is a pull-back map
(ITK's and ANTs' convention): output voxel ``x`` takes its value from ``x + u(x)`` of the
input. World coordinates and differing grids are handled one level up
(:mod:`medpipe.registration.field`).

Why our own instead of MONAI's ``Warp``/``DVF2DDF``: those assume the field's channel order
is reversed (x, y, z = K, J, I) and warp with one fixed interpolation; registration here
needs the same operations differentiably for training, on label one-hots, and exactly
invertible in numpy metrics, with one convention everywhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["identity_grid", "warp", "integrate_velocity", "compose", "invert", "jacobian_determinant",
           "resize_field", "exp_field", "INTEGRATION_STEPS"]

INTEGRATION_STEPS = 7  # scaling and squaring: v / 2^7, then 7 self-compositions (MICDIR, VoxelMorph)


def identity_grid(shape: tuple[int, ...], device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Voxel index coordinates ``(1, 3, I, J, K)`` (channel a = index along axis a)."""
    axes = [torch.arange(n, device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]


def _sample(image: torch.Tensor, coords: torch.Tensor, mode: str, padding_mode: str) -> torch.Tensor:
    """``image`` sampled at voxel coordinates ``coords`` (B, 3, *out) of the image's own grid."""
    shape = image.shape[2:]
    norm = [2.0 * coords[:, a] / max(n - 1, 1) - 1.0 for a, n in enumerate(shape)]
    grid = torch.stack(norm[::-1], dim=-1)  # grid_sample wants (x, y, z) = (K, J, I)
    if grid.shape[0] != image.shape[0]:
        grid = grid.expand(image.shape[0], *grid.shape[1:])
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding_mode, align_corners=True)


def warp(image: torch.Tensor, disp: torch.Tensor, mode: str = "bilinear",
         padding_mode: str = "border") -> torch.Tensor:
    """Pull ``image`` through ``disp`` (both on the same grid): ``out(x) = image(x + disp(x))``.

    ``mode`` is grid_sample's (``bilinear`` is trilinear in 3D, ``nearest`` for labels).
    """
    if image.shape[2:] != disp.shape[2:]:
        raise ValueError(f"image grid {tuple(image.shape[2:])} differs from field grid {tuple(disp.shape[2:])}")
    coords = identity_grid(disp.shape[2:], disp.device, disp.dtype) + disp
    return _sample(image, coords, mode, padding_mode)


def integrate_velocity(velocity: torch.Tensor, steps: int = INTEGRATION_STEPS) -> torch.Tensor:
    """Displacement of the flow of a stationary velocity field, by scaling and squaring.

    ``u = v / 2^steps``, then ``steps`` times ``u <- u + u∘(id + u)``: the exponential
    map of ``v``, a diffeomorphism whenever each small step is (Arsigny et al. 2006).
    """
    if steps < 0:
        raise ValueError(f"integration steps must be >= 0, got {steps}")
    disp = velocity / (2.0**steps)
    for _ in range(steps):
        disp = disp + warp(disp, disp)
    return disp


def exp_field(velocity: torch.Tensor, steps: int = INTEGRATION_STEPS, downsize: int = 2) -> torch.Tensor:
    """Scaling and squaring at ``1/downsize`` resolution, the result resized back (VoxelMorph's
    and MICDIR's ``int_downsize``: the velocity is smooth, and integrating it on a coarser grid
    costs ``downsize³`` times less)."""
    if downsize <= 1:
        return integrate_velocity(velocity, steps)
    shape = tuple(velocity.shape[2:])
    small = tuple(max(2, (n + downsize - 1) // downsize) for n in shape)
    return resize_field(integrate_velocity(resize_field(velocity, small), steps), shape)


def compose(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The displacement of "apply ``first``, then ``second``" as pull-backs on one grid:
    ``x -> x + first(x) -> (x + first(x)) + second(x + first(x))``."""
    return first + warp(second, first)


def invert(disp: torch.Tensor, iterations: int = 30, tol: float = 1e-3) -> torch.Tensor:
    """Inverse displacement by fixed-point iteration ``w <- -disp(x + w)`` (Chen et al. 2008).

    Converges for fields whose Jacobian stays well away from folding; stops early when the
    largest update is below ``tol`` voxels.
    """
    inv = -disp.clone()
    for _ in range(iterations):
        new = -warp(disp, inv)
        step = float((new - inv).abs().max())
        inv = new
        if step < tol:
            break
    return inv


def resize_field(disp: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A displacement resampled to another grid over the same extent (corner voxels aligned),
    its vectors rescaled to the new voxel size."""
    old = disp.shape[2:]
    if tuple(old) == tuple(shape):
        return disp
    out = F.interpolate(disp, size=tuple(shape), mode="trilinear", align_corners=True)
    scale = torch.tensor([(n - 1) / max(o - 1, 1) for n, o in zip(shape, old, strict=True)],
                         dtype=disp.dtype, device=disp.device)
    return out * scale.view(1, -1, 1, 1, 1)


def jacobian_determinant(disp: torch.Tensor, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
    """``det(I + ∇u)`` by central differences (one-sided at the border), ``(B, I, J, K)``.

    ``disp`` in voxel units; ``spacing`` only matters for anisotropic grids, where the
    displacement and the differences are both scaled to millimetres.
    """
    sp = torch.tensor(spacing, dtype=disp.dtype, device=disp.device).view(1, 3, 1, 1, 1)
    u = disp * sp
    rows = []
    for c in range(3):
        grads = torch.gradient(u[:, c], dim=(1, 2, 3), spacing=tuple(float(s) for s in spacing))
        rows.append(torch.stack(grads, dim=1))
    jac = torch.stack(rows, dim=1)  # (B, 3 comps, 3 dirs, I, J, K)
    jac = jac + torch.eye(3, dtype=disp.dtype, device=disp.device).view(1, 3, 3, 1, 1, 1)
    return torch.linalg.det(jac.permute(0, 3, 4, 5, 1, 2))
