"""`Image`: the one image type every stage passes around.

A plain dataclass: a channel-first array ``(C, I, J, K)``, a 4x4 voxel-index -> world
affine in millimetres in **RAS+** (as nibabel and MONAI hold it), and metadata. DICOM's
LPS never appears here: it is converted once, in ``medpipe.io``.

Operations that would silently break the geometry (reshaping, transposing the array
without touching the affine) are refused by ``with_array``; use ``medpipe.transforms``
for anything that moves voxels.

Example:
    >>> import numpy as np
    >>> img = Image(np.zeros((1, 4, 5, 6), np.float32), np.diag([2.0, 2.0, 3.0, 1.0]))
    >>> img.spacing, img.orientation, img.shape
    ((2.0, 2.0, 3.0), 'RAS', (4, 5, 6))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.errors import InputError

__all__ = ["Image", "ImageMeta"]


@dataclass
class ImageMeta:
    """What a stage may need to know about where an image came from."""

    modality: str = ""
    series_uid: str = ""
    description: str = ""
    source_files: list[str] = field(default_factory=list)
    # Anything else worth carrying (DICOM tags for the sidecar, label names, warnings...).
    extra: dict[str, Any] = field(default_factory=dict)

    def copy(self) -> ImageMeta:
        return ImageMeta(
            modality=self.modality,
            series_uid=self.series_uid,
            description=self.description,
            source_files=list(self.source_files),
            extra=_deepcopy_jsonish(self.extra),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageMeta:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _deepcopy_jsonish(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _deepcopy_jsonish(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_deepcopy_jsonish(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.copy()
    return x


@dataclass
class Image:
    """Channel-first voxel array + RAS+ affine (mm) + metadata.

    ``is_label`` marks integer label maps so resampling picks nearest/one-hot automatically.
    """

    array: np.ndarray
    affine: np.ndarray
    meta: ImageMeta = field(default_factory=ImageMeta)
    is_label: bool = False

    def __post_init__(self) -> None:
        arr = self.array
        if not isinstance(arr, np.ndarray):
            arr = np.asarray(arr)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4:
            raise InputError(
                f"an Image needs a channel-first (C, I, J, K) array, got shape {tuple(arr.shape)}"
            )
        self.array = arr
        aff = np.asarray(self.affine, dtype=np.float64)
        if aff.shape != (4, 4):
            raise InputError(f"an Image affine must be 4x4, got shape {aff.shape}")
        if not np.all(np.isfinite(aff)):
            raise InputError("the Image affine holds NaN or infinite values")
        if abs(np.linalg.det(aff[:3, :3])) < 1e-12:
            raise InputError("the Image affine is singular (zero spacing or collinear axes)")
        self.affine = aff

    # -- geometry -------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape (I, J, K)."""
        return tuple(int(s) for s in self.array.shape[1:])  # type: ignore[return-value]

    @property
    def n_channels(self) -> int:
        return int(self.array.shape[0])

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along I, J, K (norms of the affine's columns)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def origin(self) -> tuple[float, float, float]:
        """World (RAS) position of voxel (0, 0, 0) centre."""
        return tuple(float(v) for v in self.affine[:3, 3])  # type: ignore[return-value]

    @property
    def direction(self) -> np.ndarray:
        """3x3 unit direction cosines (columns = voxel axes in RAS)."""
        return self.affine[:3, :3] / np.asarray(self.spacing)[None, :]

    @property
    def orientation(self) -> str:
        """Closest axis codes, e.g. ``'RAS'`` or ``'LPS'`` (nibabel convention: where +index points)."""
        import nibabel as nib

        return "".join(nib.orientations.aff2axcodes(self.affine))

    def is_oblique(self, tol_deg: float = 0.5) -> bool:
        d = np.abs(self.direction)
        return bool(np.any(np.degrees(np.arccos(np.clip(d.max(axis=0), -1, 1))) > tol_deg))

    def world_coords(self, ijk: np.ndarray) -> np.ndarray:
        """Map voxel indices ``(..., 3)`` to RAS millimetres."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def same_grid(self, other: Image, atol: float = 1e-4) -> bool:
        """True when both images sample the same voxel grid (shape and affine)."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=atol))

    # -- construction ---------------------------------------------------------------
    def with_array(self, array: np.ndarray, *, is_label: bool | None = None) -> Image:
        """Same geometry and metadata, new voxel values.

        The spatial shape must not change: a transform that moves voxels must also move the
        affine, so use ``medpipe.transforms`` (reorient, resample, crop) for that.
        """
        arr = np.asarray(array)
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or tuple(arr.shape[1:]) != self.shape:
            raise InputError(
                f"with_array keeps the geometry, so the spatial shape must stay {self.shape}, "
                f"got {tuple(arr.shape)}; use medpipe.transforms to change the grid"
            )
        return Image(
            arr,
            self.affine.copy(),
            self.meta.copy(),
            self.is_label if is_label is None else is_label,
        )

    def with_geometry(self, array: np.ndarray, affine: np.ndarray) -> Image:
        """New array *and* affine (for transforms that compute both); metadata carried over."""
        return Image(np.asarray(array), np.asarray(affine, dtype=np.float64), self.meta.copy(), self.is_label)

    # -- interop --------------------------------------------------------------------
    def to_nibabel(self):
        """A ``nibabel.Nifti1Image``; one channel -> 3D, several -> 4D with channels last."""
        import nibabel as nib

        data = self.array[0] if self.n_channels == 1 else np.moveaxis(self.array, 0, -1)
        img = nib.Nifti1Image(np.ascontiguousarray(data), self.affine)
        img.header.set_xyzt_units("mm", "sec")
        img.set_qform(self.affine, code=1)
        img.set_sform(self.affine, code=1)
        if self.is_label:
            img.header.set_intent("label")
        return img

    @classmethod
    def from_nibabel(cls, img, meta: ImageMeta | None = None, is_label: bool = False) -> Image:
        data = np.asanyarray(img.dataobj)
        if data.ndim == 3:
            arr = data[None]
        elif data.ndim == 4:
            arr = np.moveaxis(data, -1, 0)
        elif data.ndim == 5 and data.shape[3] == 1:  # NIfTI vector images (x, y, z, 1, c)
            arr = np.moveaxis(data[:, :, :, 0, :], -1, 0)
        else:
            raise InputError(f"cannot make an Image from a {data.ndim}-D NIfTI array of shape {data.shape}")
        return cls(arr, np.asarray(img.affine, dtype=np.float64), meta or ImageMeta(), is_label)

    def to_sitk(self, channel: int | None = None):
        """A SimpleITK image (LPS physical space, as ITK defines it)."""
        import SimpleITK as sitk

        if channel is None and self.n_channels != 1:
            arr = np.moveaxis(self.array, 0, -1)  # (I, J, K, C)
            img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(arr, (2, 1, 0, 3))), isVector=True)
        else:
            arr = self.array[channel or 0]
            img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
        lps = np.diag([-1.0, -1.0, 1.0]) @ self.affine[:3, :3]
        sp = np.linalg.norm(lps, axis=0)
        img.SetSpacing(tuple(float(s) for s in sp))
        img.SetDirection(tuple(float(v) for v in (lps / sp).ravel()))
        img.SetOrigin(tuple(float(v) for v in (np.array([-1.0, -1.0, 1.0]) * self.affine[:3, 3])))
        return img

    @classmethod
    def from_sitk(cls, img, meta: ImageMeta | None = None, is_label: bool = False) -> Image:
        import SimpleITK as sitk

        arr = sitk.GetArrayFromImage(img)
        if img.GetDimension() != 3:
            raise InputError(f"cannot make an Image from a {img.GetDimension()}-D SimpleITK image")
        if img.GetNumberOfComponentsPerPixel() > 1:
            arr = np.transpose(arr, (3, 2, 1, 0))
        else:
            arr = arr.transpose(2, 1, 0)[None]
        direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
        lps = direction * np.asarray(img.GetSpacing(), dtype=np.float64)[None, :]
        aff = np.eye(4)
        aff[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ lps
        aff[:3, 3] = np.array([-1.0, -1.0, 1.0]) * np.asarray(img.GetOrigin(), dtype=np.float64)
        return cls(arr, aff, meta or ImageMeta(), is_label)

    def to_metatensor(self):
        """A MONAI ``MetaTensor`` (channel-first, RAS affine in ``.affine``)."""
        import torch
        from monai.data import MetaTensor

        return MetaTensor(
            torch.from_numpy(np.ascontiguousarray(self.array)),
            affine=torch.as_tensor(self.affine, dtype=torch.float64),
            meta={"space": "RAS", "modality": self.meta.modality, "series_uid": self.meta.series_uid},
        )

    @classmethod
    def from_metatensor(cls, t, meta: ImageMeta | None = None, is_label: bool = False) -> Image:
        arr = t.detach().cpu().numpy()
        aff = np.asarray(t.affine.detach().cpu().numpy(), dtype=np.float64)
        space = str(t.meta.get("space", "RAS")).upper()
        if space == "LPS":
            aff = np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff
        return cls(arr, aff, meta or ImageMeta(), is_label)

    # -- files ----------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, is_label: bool = False) -> Image:
        """Read NIfTI/NRRD/MHA by extension (DICOM folders go through ``medpipe.io.dicom``)."""
        from medpipe.io.volumes import read_volume

        return read_volume(path, is_label=is_label)

    def save(self, path: str | Path, overwrite: bool = True) -> Path:
        """Write NIfTI/NRRD/MHA by extension, atomically."""
        from medpipe.io.volumes import write_volume

        return write_volume(self, path, overwrite=overwrite)

    def __repr__(self) -> str:
        sp = ", ".join(f"{s:.3g}" for s in self.spacing)
        return (
            f"Image(shape={self.shape}, channels={self.n_channels}, dtype={self.array.dtype}, "
            f"spacing=({sp}), orientation={self.orientation}, modality={self.meta.modality!r}"
            f"{', label' if self.is_label else ''})"
        )
