"""``DisplacementField``: a dense transform in world millimetres, and warping in world coordinates.

A field lives on the *fixed* image's grid (shape + RAS affine) and holds, for every fixed
voxel centre ``x`` (world, mm, RAS+), the displacement ``u(x)`` such that the matching
moving point is ``x + u(x)`` — a pull-back map, ITK's and ANTs' convention. Because the
moving image is sampled through its *own* affine, fixed and moving images may have any
grids (spacing, orientation, field of view); nothing is resampled twice.

File form (``save``/``load``): a NIfTI vector image ``(I, J, K, 1, 3)``, intent
``vector``, float32, displacements in **LPS** millimetres — what ITK, ANTs and 3D Slicer
read as a displacement-field transform (``sitk.DisplacementFieldTransform``, Slicer's grid
transform). In memory everything is RAS, as ``Image`` is; the flip happens only here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medpipe.errors import GeometryError, InputError
from medpipe.image import Image
from medpipe.registration import spatial

__all__ = ["DisplacementField", "warp_image", "sample_world", "LPS"]

LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class DisplacementField:
    """``array`` (3, I, J, K) float32 displacement in RAS mm on the grid ``(shape, affine)``."""

    array: np.ndarray
    affine: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        arr = np.asarray(self.array, dtype=np.float32)
        if arr.ndim != 4 or arr.shape[0] != 3:
            raise InputError(f"a displacement field must be (3, I, J, K), got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise InputError("the displacement field holds NaN or infinite values")
        self.array = arr
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise InputError(f"a displacement field affine must be 4x4, got {self.affine.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape[1:])  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @classmethod
    def identity(cls, reference: Image) -> DisplacementField:
        return cls(np.zeros((3, *reference.shape), np.float32), reference.affine.copy())

    @classmethod
    def from_affine(cls, reference: Image, matrix: np.ndarray) -> DisplacementField:
        """The field of a world affine ``matrix`` (4x4, RAS, fixed point -> moving point)."""
        pts = _world_points(reference.shape, reference.affine)
        mapped = pts @ matrix[:3, :3].T + matrix[:3, 3]
        return cls(np.moveaxis(mapped - pts, -1, 0).astype(np.float32), reference.affine.copy())

    @classmethod
    def from_voxel(cls, disp_vox: np.ndarray | torch.Tensor, affine: np.ndarray) -> DisplacementField:
        """From a displacement in voxel units of the grid ``affine`` (channel a along axis a)."""
        d = disp_vox.detach().cpu().numpy() if isinstance(disp_vox, torch.Tensor) else np.asarray(disp_vox)
        d = d[0] if d.ndim == 5 else d
        world = np.einsum("ab,b...->a...", np.asarray(affine)[:3, :3], d)
        return cls(world.astype(np.float32), affine)

    def to_voxel(self) -> np.ndarray:
        """The displacement in voxel units of its own grid ``(3, I, J, K)``."""
        inv = np.linalg.inv(self.affine[:3, :3])
        return np.einsum("ab,b...->a...", inv, self.array).astype(np.float32)

    def points(self) -> np.ndarray:
        """Moving-space points ``x + u(x)`` for every voxel, ``(I, J, K, 3)`` RAS mm."""
        return _world_points(self.shape, self.affine) + np.moveaxis(self.array, 0, -1)

    def jacobian_determinant(self) -> np.ndarray:
        """``det(I + ∇u)`` per voxel (central differences in mm), ``(I, J, K)``."""
        t = torch.from_numpy(self.to_voxel())[None]
        return spatial.jacobian_determinant(t, self.spacing)[0].numpy()

    def on_grid(self, reference: Image) -> DisplacementField:
        """The same transform sampled on another fixed grid (trilinear; identity outside)."""
        if reference.shape == self.shape and np.allclose(reference.affine, self.affine, atol=1e-5):
            return self
        pts = _world_points(reference.shape, reference.affine)
        disp = sample_world(self.array, self.affine, pts, order=1, fill=0.0)
        return DisplacementField(disp, reference.affine.copy(), dict(self.meta))

    # -- files -----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """NIfTI vector image in LPS mm (ITK / ANTs / Slicer displacement field), atomically."""
        import nibabel as nib

        from medpipe.io.atomic import atomic_path

        lps = np.einsum("ab,b...->a...", LPS, self.array).astype(np.float32)
        data = np.moveaxis(lps, 0, -1)[:, :, :, None, :]  # (I, J, K, 1, 3)
        img = nib.Nifti1Image(data, self.affine)
        img.header.set_intent("vector")
        img.header.set_xyzt_units("mm", "sec")
        img.set_qform(self.affine, code=1)
        img.set_sform(self.affine, code=1)
        with atomic_path(path) as tmp:
            img.to_filename(str(tmp))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> DisplacementField:
        import nibabel as nib

        p = Path(path)
        if not p.is_file():
            raise InputError(f"displacement field {p} does not exist")
        try:
            img = nib.load(str(p))
            data = np.asarray(img.dataobj, dtype=np.float32)
        except Exception as exc:  # nibabel raises many types for corrupt files
            raise InputError(f"{p} is not a readable NIfTI displacement field: {exc}") from exc
        if data.ndim == 5 and data.shape[3] == 1 and data.shape[4] == 3:
            vec = np.moveaxis(data[:, :, :, 0, :], -1, 0)
        elif data.ndim == 4 and data.shape[3] == 3:
            vec = np.moveaxis(data, -1, 0)
        else:
            raise InputError(f"{p} holds an array of shape {data.shape}, not a 3D displacement field (I, J, K, 1, 3)")
        ras = np.einsum("ab,b...->a...", LPS, vec)
        return cls(ras, np.asarray(img.affine, dtype=np.float64))


def _world_points(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), axis=-1)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def sample_world(volume: np.ndarray, affine: np.ndarray, points: np.ndarray, *, order: int = 1,
                 fill: float = 0.0) -> np.ndarray:
    """``volume`` (C, I, J, K) on grid ``affine`` sampled at world ``points`` (..., 3):
    trilinear (``order=1``) or nearest (``order=0``), ``fill`` outside the grid."""
    inv = np.linalg.inv(affine)
    vox = points @ inv[:3, :3].T + inv[:3, 3]  # (..., 3) voxel coordinates of the source
    t = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None]
    coords = torch.from_numpy(np.moveaxis(vox, -1, 0).astype(np.float32))[None]
    out_shape = points.shape[:-1]
    coords = coords.reshape(1, 3, *out_shape) if len(out_shape) == 3 else coords.reshape(1, 3, 1, 1, -1)
    mode = "bilinear" if order == 1 else "nearest"
    # border padding, then the fill value where the point left the grid (a half voxel of slack).
    # Within the slack, clamping the coordinate equals zero padding renormalised by the weight
    # that fell inside (trilinear weights and the inside mask both factor per axis), without a
    # second sampling pass of a ones volume.
    vals = spatial._sample(t, coords, mode, "border")[0].numpy().reshape(volume.shape[0], *out_shape)
    n = np.asarray(volume.shape[1:])
    inside = np.all((vox >= -0.5) & (vox <= n - 0.5), axis=-1)
    return np.where(inside[None], vals, np.float32(fill)).astype(np.float32)


def warp_image(moving: Image, field: DisplacementField, *, label_mode: str = "onehot",
               fill: float | None = None) -> Image:
    """``moving`` resampled onto the field's (fixed) grid through the transform.

    Images: trilinear, ``fill`` outside the moving image (default its minimum). Label maps:
    ``onehot`` (each label's mask interpolated linearly, the largest wins: no jagged
    nearest-neighbour edges) or ``nearest``.
    """
    if field.shape[0] < 1:
        raise GeometryError("the displacement field is empty")
    pts = field.points()
    ref_affine = field.affine.copy()
    if moving.is_label:
        lab = moving.array[0]
        if label_mode == "nearest":
            out = sample_world(lab[None].astype(np.float32), moving.affine, pts, order=0, fill=0)[0]
            out = np.rint(out).astype(lab.dtype)
        elif label_mode == "onehot":
            values = [v for v in np.unique(lab) if v != 0]
            best = np.zeros(field.shape, np.float32)
            out = np.zeros(field.shape, lab.dtype)
            total = np.zeros(field.shape, np.float32)
            for v in values:
                p = sample_world((lab == v)[None].astype(np.float32), moving.affine, pts, order=1, fill=0)[0]
                total += p
                better = p > best
                best[better] = p[better]
                out[better] = v
            out = np.where(best > 1.0 - total, out, np.zeros((), lab.dtype))  # background wins ties
        else:
            raise InputError(f"label_mode must be 'onehot' or 'nearest', got {label_mode!r}")
        arr = out[None]
    else:
        f = float(np.min(moving.array)) if fill is None else float(fill)
        arr = sample_world(moving.array.astype(np.float32), moving.affine, pts, order=1, fill=f)
    return Image(arr, ref_affine, moving.meta.copy(), moving.is_label)
