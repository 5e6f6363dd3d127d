"""Raw MRI k-space as a first-class input: the ``KSpace`` artifact and its file forms.

``KSpace.data`` is complex ``(coils, slices, rows, cols)``: rows are the readout (fully
sampled, possibly oversampled), columns the phase encoding, where 1D masks select lines (the
fastMRI layout, per slice). ``mask`` is boolean and broadcasts to ``(slices, rows, cols)``.
``affine`` is the RAS+ voxel -> world mapping of the *reconstructed image* grid, whose array
is ``(cols, rows, slices)`` as medpipe's ``Image`` holds an axial series (index I along the
image columns, J along the rows, K across slices), so a reconstruction is an ``Image`` that the
rest of the pipeline (segmentation, DICOM export) handles like any scan.

Readers (``read_kspace`` picks by content, never by name):

- **fastMRI HDF5**: ``kspace`` (slices, coils, rows, cols), optional ``mask`` and
  ``reconstruction_rss``, attributes ``acquisition`` and ``max``; the FOV, matrix and readout
  oversampling come from the ``ismrmrd_header`` XML (fastMRI records no slice positions, so the
  affine is an axial one centred at the isocentre, said in ``meta['warnings']``);
- **ISMRMRD HDF5** (``dataset/data`` + ``dataset/xml``, read with the ``ismrmrd`` package): one
  readout per acquisition, placed by ``kspace_encode_step_1`` and ``slice``; noise scans are
  skipped; geometry from each slice's ``position``/``read_dir``/``phase_dir`` (LPS -> RAS);
- **medpipe's own files**: the fastMRI layout plus ``mask``, ``coil_maps`` and the attributes
  ``medpipe_kspace``, ``affine``, ``image_shape`` and ``meta`` (JSON), so fastMRI tools read them.

Bad input (not HDF5, no k-space in it, real-valued or non-finite k-space, a mask that does not
fit) raises ``InputError`` naming the file; writes are atomic.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.errors import InputError

__all__ = ["KSpace", "read_kspace", "write_kspace", "axial_affine", "pixel_size_mm", "center_crop", "FORMAT_VERSION"]

FORMAT_VERSION = "1"


def pixel_size_mm(affine: np.ndarray) -> np.ndarray:
    """(column, row) pixel size in mm of the image grid an affine describes."""
    return np.linalg.norm(np.asarray(affine, float).reshape(4, 4)[:3, :2], axis=0)


def axial_affine(rows: int, cols: int, slices: int, pixel_mm: tuple[float, float] = (1.0, 1.0),
                 slice_mm: float = 1.0, centre: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """RAS+ affine of an axial series centred at ``centre``: columns run to the patient's left,
    rows to posterior, slices to superior (the DICOM way); the centre pixel is ``N // 2``
    (where the centred FFT puts the field-of-view centre)."""
    row_mm, col_mm = (float(p) for p in pixel_mm)
    aff = np.diag([-col_mm, -row_mm, float(slice_mm), 1.0])
    aff[:3, 3] = np.asarray(centre, float) - aff[:3, :3] @ np.array([cols // 2, rows // 2, (slices - 1) / 2])
    return aff


@dataclass
class KSpace:
    """Multi-coil Cartesian k-space with its sampling mask and acquisition geometry."""

    data: np.ndarray  # complex64 (coils, slices, rows, cols)
    mask: np.ndarray  # bool, broadcasts to (slices, rows, cols)
    affine: np.ndarray  # 4x4 RAS+ of the image grid (cols, rows, slices) of image_shape
    image_shape: tuple[int, int] | None = None  # (rows, cols) kept after the readout-oversampling crop
    coil_maps: np.ndarray | None = None  # complex (coils, slices, rows, cols)
    reference: np.ndarray | None = None  # float32 (slices, image rows, image cols): fully sampled RSS
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = self.meta.get("source", "k-space")
        d = np.asarray(self.data)
        if not np.iscomplexobj(d):
            raise InputError(f"{where}: k-space is real-valued ({d.dtype}); it must be complex")
        if d.ndim == 3:
            d = d[:, None]
        if d.ndim != 4:
            raise InputError(f"{where}: k-space must be (coils, [slices,] rows, cols), got shape {d.shape}")
        self.data = d.astype(np.complex64, copy=False)
        m = np.asarray(self.mask).astype(bool)
        while m.ndim < 3:
            m = m[None]
        if m.ndim != 3 or any(ms not in (1, ds) for ms, ds in zip(m.shape, d.shape[1:], strict=True)):
            raise InputError(f"{where}: the sampling mask has shape {tuple(np.asarray(self.mask).shape)}, which does "
                             f"not match k-space of {d.shape[1]} slice(s) x {d.shape[2]} rows x {d.shape[3]} columns")
        if not m.any():
            raise InputError(f"{where}: the sampling mask selects no k-space point")
        self.mask = m
        aff = np.asarray(self.affine, float)
        if aff.shape != (4, 4) or not np.isfinite(aff).all() or abs(np.linalg.det(aff[:3, :3])) < 1e-12:
            raise InputError(f"{where}: the acquisition geometry (affine) must be a finite, invertible 4x4 matrix")
        self.affine = aff
        shape = self.image_shape or d.shape[2:]
        self.image_shape = (int(shape[0]), int(shape[1]))
        if not (0 < self.image_shape[0] <= d.shape[2] and 0 < self.image_shape[1] <= d.shape[3]):
            raise InputError(f"{where}: image_shape {self.image_shape} exceeds the k-space matrix {d.shape[2:]}")
        if self.coil_maps is not None:
            cm = np.asarray(self.coil_maps)
            if cm.ndim == 3:
                cm = cm[:, None]
            if cm.shape != d.shape:
                raise InputError(f"{where}: coil maps of shape {cm.shape} do not match k-space {d.shape}")
            self.coil_maps = cm.astype(np.complex64, copy=False)
        if self.reference is not None:
            ref = np.asarray(self.reference, np.float32)
            if ref.ndim == 2:
                ref = ref[None]
            if ref.shape != (d.shape[1], *self.image_shape):
                raise InputError(f"{where}: the reference image has shape {ref.shape}, expected "
                                 f"{(d.shape[1], *self.image_shape)} (slices, rows, cols)")
            self.reference = ref

    # -- facts ----------------------------------------------------------------------
    @property
    def n_coils(self) -> int:
        return int(self.data.shape[0])

    @property
    def n_slices(self) -> int:
        return int(self.data.shape[1])

    @property
    def matrix(self) -> tuple[int, int]:
        """(rows, cols) of the k-space grid."""
        return int(self.data.shape[2]), int(self.data.shape[3])

    def slice_mask(self, s: int) -> np.ndarray:
        """The (rows | 1, cols) mask of slice ``s``."""
        return self.mask[s if self.mask.shape[0] > 1 else 0]

    @property
    def acceleration(self) -> float:
        """Measured acceleration: k-space points over sampled points (1.0 = fully sampled)."""
        full = np.broadcast_to(self.mask, (self.n_slices, *self.matrix))
        n = int(full.sum())
        return math.inf if n == 0 else full.size / n

    @property
    def is_undersampled(self) -> bool:
        return not bool(self.mask.all())

    def check_finite(self) -> None:
        """Refuse NaN/inf k-space (one slice at a time, so a large file is not copied)."""
        for s in range(self.n_slices):
            if not np.isfinite(self.data[:, s]).all():
                raise InputError(f"{self.meta.get('source', 'k-space')}: slice {s} of the k-space holds NaN or "
                                 "infinite values")

    def undersample(self, mask: np.ndarray, info: dict[str, Any] | None = None) -> KSpace:
        """Retrospective undersampling of fully sampled data; keeps their RSS as the reference."""
        from medpipe.recon.fft import ifft2c
        from medpipe.recon.sense import rss

        where = self.meta.get("source", "k-space")
        if self.is_undersampled:
            raise InputError(f"{where} is already undersampled (acceleration {self.acceleration:.2f}x); "
                             "undersample only fully sampled k-space")
        m = np.asarray(mask, bool)
        while m.ndim < 3:
            m = m[None]
        ref = self.reference
        if ref is None:
            ref = np.stack([center_crop(rss(ifft2c(self.data[:, s]), 0), self.image_shape)
                            for s in range(self.n_slices)]).astype(np.float32)
        meta = {**self.meta, **(info or {})}
        out = replace(self, data=self.data * np.broadcast_to(m, self.data.shape[1:])[None], mask=m,
                      reference=ref, meta=meta)
        return out


def center_crop(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The centred ``shape`` window of the last two axes (removes readout oversampling)."""
    r, c = image.shape[-2:]
    r0, c0 = r // 2 - shape[0] // 2, c // 2 - shape[1] // 2
    return image[..., r0:r0 + shape[0], c0:c0 + shape[1]]


# ------------------------------------------------------------------------- reading
def read_kspace(path: str | Path) -> KSpace:
    """Read a fastMRI, ISMRMRD or medpipe k-space HDF5 file (format detected from its content)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise InputError(f"k-space file {path} does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError:
        with open(path, "rb") as fh:
            head = fh.read(8)
        if head == b"\x89HDF\r\n\x1a\n":
            raise InputError(f"{path} is an HDF5 file that cannot be read: it is truncated or damaged (an "
                             "interrupted copy?); copy it again from the scanner or archive") from None
        raise InputError(f"{path} is not an HDF5 file; k-space must be fastMRI, ISMRMRD or medpipe HDF5") from None
    with f:
        if "kspace" in f:
            ks = _read_fastmri(f, path)
        elif "dataset" in f and isinstance(f["dataset"], h5py.Group) and "data" in f["dataset"]:
            ks = None
        else:
            raise InputError(f"{path} is an HDF5 file but holds no k-space: no 'kspace' dataset (fastMRI/medpipe) "
                             "and no ISMRMRD 'dataset/data'")
    if ks is None:
        ks = _read_ismrmrd(path)
    ks.check_finite()
    return ks


def _xml_geometry(xml: str) -> dict[str, Any]:
    """Encoded/recon matrix and FOV from an ISMRMRD header (namespace-agnostic)."""
    root = ET.fromstring(xml)

    def find(*names: str) -> ET.Element | None:
        node: ET.Element | None = root
        for n in names:
            node = next((c for c in (node if node is not None else []) if c.tag.split("}")[-1] == n), None)
        return node

    out: dict[str, Any] = {}
    enc = find("encoding")
    for space in ("encodedSpace", "reconSpace"):
        mat, fov = find("encoding", space, "matrixSize"), find("encoding", space, "fieldOfView_mm")
        if enc is None or mat is None or fov is None:
            continue
        out[space] = ({c.tag.split("}")[-1]: int(float(c.text or 0)) for c in mat},
                      {c.tag.split("}")[-1]: float(c.text or 0) for c in fov})
    return out


def _read_fastmri(f, path: Path) -> KSpace:
    ds = f["kspace"]
    if not np.issubdtype(ds.dtype, np.complexfloating):
        raise InputError(f"{path}: 'kspace' is real-valued ({ds.dtype}); k-space must be complex")
    if ds.ndim == 3:  # single-coil fastMRI: (slices, rows, cols)
        data = np.asarray(ds)[None]
    elif ds.ndim == 4:
        data = np.moveaxis(np.asarray(ds), 1, 0)
    else:
        raise InputError(f"{path}: 'kspace' must be (slices, coils, rows, cols), got shape {ds.shape}")
    rows, cols = data.shape[2:]
    attrs = dict(f.attrs)
    own = "medpipe_kspace" in attrs
    meta: dict[str, Any] = json.loads(attrs["meta"]) if own and "meta" in attrs else {}
    meta.setdefault("warnings", [])
    meta["source"] = str(path)
    meta["format"] = "medpipe" if own else "fastmri"
    if "acquisition" in attrs:
        meta["acquisition"] = str(attrs["acquisition"])
    if "mask" in f:
        mask = np.asarray(f["mask"]).astype(bool)
        if mask.ndim == 1:
            if mask.shape[0] != cols:
                raise InputError(f"{path}: the mask has {mask.shape[0]} entries but the k-space has {cols} columns")
            mask = mask[None, None]
    else:  # undersampled fastMRI files zero the unsampled columns
        sampled = np.abs(data[0, :, rows // 2, :]) > 0
        mask = sampled[:, None, :] if not sampled.all() else np.ones((1, 1, cols), bool)
    image_shape = tuple(int(v) for v in attrs["image_shape"]) if "image_shape" in attrs else None
    if own and "affine" in attrs:
        affine = np.asarray(attrs["affine"], float).reshape(4, 4)
    else:
        geo = _xml_geometry(_text(f["ismrmrd_header"][()])) if "ismrmrd_header" in f else {}
        recon = geo.get("reconSpace")
        if recon is not None:
            mat, fov = recon
            image_shape = (min(rows, mat.get("x", rows)), min(cols, mat.get("y", cols)))
            px = (fov.get("x", image_shape[0]) / max(1, mat.get("x", 1)), fov.get("y", image_shape[1]) / max(1, mat.get("y", 1)))
            thick = fov.get("z", 1.0) or 1.0
        else:
            px, thick = (1.0, 1.0), 1.0
            meta["warnings"].append(f"{path.name}: no ismrmrd_header; pixel size assumed 1 mm")
        shape = image_shape or (rows, cols)
        affine = axial_affine(shape[0], shape[1], data.shape[1], px, thick)
        meta["warnings"].append(f"{path.name}: fastMRI files record no slice position or orientation; the image "
                                "is placed as an axial series at the isocentre")
    reference = np.asarray(f["reconstruction_rss"], np.float32) if "reconstruction_rss" in f else None
    coil_maps = np.moveaxis(np.asarray(f["coil_maps"]), 1, 0) if "coil_maps" in f else None
    if reference is not None and image_shape is None:
        image_shape = reference.shape[-2:]
    return KSpace(data, mask, affine, image_shape, coil_maps, reference, meta)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _read_ismrmrd(path: Path) -> KSpace:
    try:
        import ismrmrd
        import ismrmrd.xsd
    except ImportError as exc:
        raise InputError(f"{path} is an ISMRMRD file; reading it needs the ismrmrd package: pip install ismrmrd") from exc
    try:
        dset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=False)
        header = ismrmrd.xsd.CreateFromDocument(dset.read_xml_header())
        n_acq = dset.number_of_acquisitions()
    except Exception as exc:  # the ismrmrd package raises bare exceptions for malformed files
        raise InputError(f"{path}: not a readable ISMRMRD dataset ({type(exc).__name__}: {exc})") from exc
    enc = header.encoding[0]
    nx, ny = int(enc.encodedSpace.matrixSize.x), int(enc.encodedSpace.matrixSize.y)
    rx, ry = int(enc.reconSpace.matrixSize.x), int(enc.reconSpace.matrixSize.y)
    fov = enc.reconSpace.fieldOfView_mm
    lim = enc.encodingLimits.slice
    n_slices = int(lim.maximum) + 1 if lim is not None else 1
    data = None
    sampled = np.zeros((n_slices, ny), bool)
    geometry: dict[int, tuple[np.ndarray, ...]] = {}
    for i in range(n_acq):
        acq = dset.read_acquisition(i)
        if acq.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT):
            continue
        if data is None:
            data = np.zeros((acq.active_channels, n_slices, nx, ny), np.complex64)
        y, s = int(acq.idx.kspace_encode_step_1), int(acq.idx.slice)
        line = np.asarray(acq.data)
        n = line.shape[1]
        start = nx // 2 - int(acq.center_sample) if n != nx else 0
        if not (0 <= y < ny and 0 <= s < n_slices and 0 <= start and start + n <= nx):
            raise InputError(f"{path}: acquisition {i} (line {y}, slice {s}) lies outside the encoded matrix {nx}x{ny}")
        data[:, s, start:start + n, y] = line
        sampled[s, y] = True
        geometry.setdefault(s, tuple(np.asarray(v, float) for v in (acq.position, acq.read_dir, acq.phase_dir,
                                                                     acq.slice_dir)))
    dset.close()
    if data is None:
        raise InputError(f"{path}: the ISMRMRD dataset holds no imaging acquisitions")
    image_shape = (min(nx, rx), min(ny, ry))
    px = (float(fov.x) / max(1, rx), float(fov.y) / max(1, ry))
    pos0, read, phase, sl_dir = geometry[min(geometry)]
    warnings: list[str] = []
    if min(np.linalg.norm(read), np.linalg.norm(phase), np.linalg.norm(sl_dir)) < 0.5:
        affine = axial_affine(image_shape[0], image_shape[1], n_slices, px, float(fov.z or 1.0), tuple(pos0))
        warnings.append(f"{path.name}: the acquisitions carry no read/phase/slice directions; the image is placed "
                        "as an axial series")
    else:
        if n_slices > 1 and len(geometry) > 1:
            step = (geometry[max(geometry)][0] - pos0) / (max(geometry) - min(geometry))
        else:
            step = sl_dir * float(fov.z or 1.0)
        lps = np.eye(4)
        lps[:3, 0], lps[:3, 1], lps[:3, 2] = phase * px[1], read * px[0], step
        lps[:3, 3] = pos0 - lps[:3, 0] * (image_shape[1] // 2) - lps[:3, 1] * (image_shape[0] // 2)
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    mask = sampled[:, None, :] if sampled.shape[0] > 1 and not (sampled == sampled[:1]).all() else sampled[:1, None, :]
    meta = {"source": str(path), "format": "ismrmrd", "warnings": warnings}
    return KSpace(data, mask, affine, image_shape, None, None, meta)


# ------------------------------------------------------------------------- writing
def write_kspace(ks: KSpace, path: str | Path, *, overwrite: bool = True) -> Path:
    """Write ``ks`` as medpipe HDF5 (fastMRI layout + mask, maps and geometry), atomically."""
    import h5py

    from medpipe.io.atomic import atomic_path
    from medpipe.pipeline.artifacts import json_default_lenient

    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("kspace", data=np.moveaxis(ks.data, 0, 1), chunks=(1, *ks.data.shape[:1], *ks.matrix))
            f.create_dataset("mask", data=ks.mask.astype(np.uint8))
            if ks.reference is not None:
                f.create_dataset("reconstruction_rss", data=ks.reference)
                f.attrs["max"] = float(ks.reference.max())
            if ks.coil_maps is not None:
                f.create_dataset("coil_maps", data=np.moveaxis(ks.coil_maps, 0, 1))
            f.attrs["medpipe_kspace"] = FORMAT_VERSION
            f.attrs["affine"] = ks.affine.ravel()
            f.attrs["image_shape"] = np.asarray(ks.image_shape, int)
            if "acquisition" in ks.meta:
                f.attrs["acquisition"] = str(ks.meta["acquisition"])
            meta = {k: v for k, v in ks.meta.items() if k not in ("source", "format")}
            f.attrs["meta"] = json.dumps(meta, default=json_default_lenient)
    return path
