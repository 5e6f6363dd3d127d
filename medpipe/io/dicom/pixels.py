"""Pixel data: read the stored values of a sorted frame list, then rescale them.

Why our own fast path: pydicom's ``pixel_array`` parses every file a second time and
copies the data several times; ITK's C++ reader is much faster than that. For native
(uncompressed) files ``headers.py`` already knows where the PixelData value starts, so
here each frame is ``readinto`` straight into its slot of one preallocated array, from a
small thread pool (file reads release the GIL). Compressed transfer syntaxes (JPEG,
JPEG-LS, JPEG 2000, RLE, deflate) go through pydicom and its installed plugins; if no
installed plugin decodes a syntax we say which package would.
"""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from medpipe.errors import DicomError
from medpipe.io.dicom.model import FrameRecord, SeriesInfo
from medpipe.io.dicom.sources import Source

__all__ = ["read_stored_frames", "rescale_frames", "check_decodable"]

_BIG_ENDIAN = "1.2.840.10008.1.2.2"
# Which package decodes which family, for the "install X" sentence.
_PLUGIN_HINT = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg-libjpeg or python-gdcm",
    "1.2.840.10008.1.2.4.51": "pylibjpeg-libjpeg or python-gdcm",
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg or python-gdcm",
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg or python-gdcm",
    "1.2.840.10008.1.2.4.80": "pyjpegls, pylibjpeg-libjpeg or python-gdcm",
    "1.2.840.10008.1.2.4.81": "pyjpegls, pylibjpeg-libjpeg or python-gdcm",
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg or python-gdcm",
    "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg or python-gdcm",
    "1.2.840.10008.1.2.4.201": "pylibjpeg-openjpeg (2.4 or newer)",
    "1.2.840.10008.1.2.4.202": "pylibjpeg-openjpeg (2.4 or newer)",
    "1.2.840.10008.1.2.4.203": "pylibjpeg-openjpeg (2.4 or newer)",
    "1.2.840.10008.1.2.5": "pylibjpeg-rle (or numpy, which pydicom uses by default)",
}


def _ts_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return f"{name} ({uid})" if name != uid else uid


def check_decodable(info: SeriesInfo) -> None:
    """Refuse early, naming the package to install, when a transfer syntax cannot be decoded."""
    from pydicom.pixels import get_decoder

    for ts in sorted({f.transfer_syntax for f in info.frames if f.pixel_offset is None}):
        try:
            dec = get_decoder(ts)
        except NotImplementedError:
            dec = None
        if dec is None or not dec.is_available:
            hint = _PLUGIN_HINT.get(ts, "a pydicom pixel-data plugin for it")
            example = next(f.source.label for f in info.frames if f.transfer_syntax == ts)
            raise DicomError(
                f"{info.label()}: {example} uses transfer syntax {_ts_name(ts)}, which no installed "
                f"decoder handles; install {hint}"
            )


def _native_dtype(f: FrameRecord) -> np.dtype:
    kind = "i" if f.pixel_representation == 1 else "u"
    if f.bits_allocated not in (8, 16, 32):
        raise ValueError(f"{f.bits_allocated}-bit pixels")
    dt = np.dtype(f"{kind}{f.bits_allocated // 8}")
    return dt.newbyteorder(">") if f.transfer_syntax == _BIG_ENDIAN else dt.newbyteorder("<")


def _fast_path_ok(frames: list[FrameRecord]) -> bool:
    f0 = frames[0]
    return all(
        f.pixel_offset is not None
        and f.bits_allocated in (8, 16, 32)
        and f.bits_allocated == f0.bits_allocated
        and f.pixel_representation == f0.pixel_representation
        and f.transfer_syntax == f0.transfer_syntax
        and f.samples_per_pixel == f0.samples_per_pixel
        and f.photometric in ("MONOCHROME1", "MONOCHROME2", "RGB")
        and (f.samples_per_pixel == 1 or f.planar_configuration == f0.planar_configuration)
        for f in frames
    )


def _frame_shape(f: FrameRecord) -> tuple[int, ...]:
    return (f.rows, f.cols) if f.samples_per_pixel == 1 else (f.rows, f.cols, f.samples_per_pixel)


def _read_native(info: SeriesInfo, out: np.ndarray, progress) -> None:
    f0 = info.frames[0]
    frame_bytes = out[0].nbytes
    planar = f0.samples_per_pixel > 1 and f0.planar_configuration == 1

    def read_disk(k: int) -> None:
        f = info.frames[k]
        start = f.pixel_offset + (f.frame or 0) * frame_bytes
        if start + frame_bytes > f.pixel_offset + f.pixel_length:
            raise DicomError(f"{info.label()}: {f.source.label} has less pixel data than its header declares")
        target = out[k] if not planar else np.empty(frame_bytes // out.itemsize, out.dtype)
        with open(f.source.path, "rb") as fh:
            fh.seek(start)
            n = fh.readinto(memoryview(target).cast("B"))
        if n != frame_bytes:
            raise DicomError(f"{info.label()}: {f.source.label} has truncated pixel data")
        if planar:
            out[k] = target.reshape(f0.samples_per_pixel, f.rows, f.cols).transpose(1, 2, 0)

    disk = [k for k, f in enumerate(info.frames) if f.source.on_disk]
    in_zip = [k for k, f in enumerate(info.frames) if not f.source.on_disk]
    workers = 1 if len(disk) < 8 else 4
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(read_disk, disk):
            if progress:
                progress()
    cache: dict[Source, bytes] = {}
    for k in in_zip:
        f = info.frames[k]
        if f.source not in cache:
            cache.clear()
            cache[f.source] = f.source.read_bytes()
        start = f.pixel_offset + (f.frame or 0) * frame_bytes
        raw = np.frombuffer(cache[f.source], out.dtype, count=out[0].size, offset=start)
        if planar:
            out[k] = raw.reshape(f0.samples_per_pixel, f.rows, f.cols).transpose(1, 2, 0)
        else:
            out[k] = raw.reshape(out[k].shape)
        if progress:
            progress()


def _read_with_pydicom(info: SeriesInfo, progress) -> np.ndarray:
    import pydicom

    by_source: dict[Source, list[int]] = defaultdict(list)
    for k, f in enumerate(info.frames):
        by_source[f.source].append(k)
    out: np.ndarray | None = None
    for src, ks in by_source.items():
        try:
            with src.open() as fh:
                ds = pydicom.dcmread(fh)
                arr = ds.pixel_array
        except DicomError:
            raise
        except Exception as exc:
            raise DicomError(
                f"{info.label()}: cannot decode the pixel data of {src.label} "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        n_frames = info.frames[ks[0]].n_frames
        spp = info.frames[ks[0]].samples_per_pixel
        if n_frames == 1:
            arr = arr[None]
        elif spp == 1 and arr.ndim == 2:
            arr = arr[None]
        if out is None:
            out = np.empty((len(info.frames),) + arr.shape[1:], arr.dtype)
        if arr.shape[1:] != out.shape[1:]:
            raise DicomError(
                f"{info.label()}: {src.label} holds {arr.shape[1:]} pixels, other slices {out.shape[1:]}"
            )
        for k in ks:
            out[k] = arr[info.frames[k].frame or 0]
            if progress:
                progress()
    assert out is not None
    return out


def read_stored_frames(info: SeriesInfo, progress=None) -> np.ndarray:
    """Stored values of ``info.frames`` in order: ``(K, rows, cols)`` or ``(K, rows, cols, 3)``."""
    frames = info.frames
    if _fast_path_ok(frames):
        f0 = frames[0]
        out = np.empty((len(frames),) + _frame_shape(f0), _native_dtype(f0))
        _read_native(info, out, progress)
        if not out.dtype.isnative:
            out = out.astype(out.dtype.newbyteorder("="))
        return _mask_bits(out, f0)
    check_decodable(info)
    return _read_with_pydicom(info, progress)


def _mask_bits(arr: np.ndarray, f: FrameRecord) -> np.ndarray:
    """Honour BitsStored < BitsAllocated (sign-extend signed data; drop stray high bits)."""
    spare = f.bits_allocated - f.bits_stored
    if spare <= 0 or f.bits_stored <= 0:
        return arr
    if f.pixel_representation == 1:
        arr <<= spare
        arr >>= spare
    elif arr.max() >> f.bits_stored:
        arr &= (1 << f.bits_stored) - 1
    return arr


def _stored_range(f: FrameRecord) -> tuple[int, int]:
    bs = f.bits_stored or f.bits_allocated
    if f.pixel_representation == 1:
        return -(1 << (bs - 1)), (1 << (bs - 1)) - 1
    return 0, (1 << bs) - 1


def rescale_frames(stored: np.ndarray, frames: list[FrameRecord]) -> np.ndarray:
    """Modality values: RescaleSlope/Intercept (or MONOCHROME1 inverted when there is none).

    Exact integers stay integers (smallest of the stored type, int16, int32 that holds
    the whole possible range); anything with a non-unit slope or fractional intercept
    becomes float32.
    """
    f0 = frames[0]
    arr = stored
    slopes = np.array([f.slope for f in frames], np.float64)
    inters = np.array([f.intercept for f in frames], np.float64)
    no_modality_lut = bool(np.all(slopes == 1.0) and np.all(inters == 0.0))
    # MONOCHROME1 is a display instruction: with a rescale the modality values (HU...) are
    # already what they are; without one (CR/DX) the stored values are inverted so that
    # higher means brighter everywhere downstream, as with MONOCHROME2.
    if f0.photometric == "MONOCHROME1" and f0.samples_per_pixel == 1 and no_modality_lut:
        lo, hi = _stored_range(f0)
        # v -> (lo + hi) - v maps the stored range onto itself, so the dtype is kept.
        arr = np.invert(arr) if lo < 0 else (np.asarray(hi, arr.dtype) - arr)
    bshape = (-1,) + (1,) * (arr.ndim - 1)
    if np.all(slopes == 1.0) and np.all(inters == np.round(inters)):
        if np.all(inters == 0):
            return arr
        # The actual range (not the theoretical one) decides, so 16-bit CT stays int16.
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        lo, hi = lo + inters.min(), hi + inters.max()
        target = np.int16 if (lo >= -32768 and hi <= 32767) else np.int32
        # ``stored`` is our own fresh buffer: add in place when the type already fits.
        out = arr if arr.dtype == target else arr.astype(target)
        if np.all(inters == inters[0]):
            out += target(inters[0])
        else:
            out += inters.astype(target).reshape(bshape)
        return out
    if np.all(slopes == np.round(slopes)) and np.all(inters == np.round(inters)):
        # Integral slope too (e.g. -1 for inverted MONOCHROME1 data): still exact integers.
        wide = arr.astype(np.int64) * slopes.astype(np.int64).reshape(bshape) + inters.astype(np.int64).reshape(bshape)
        lo, hi = (int(wide.min()), int(wide.max())) if wide.size else (0, 0)
        for target in (np.int16, np.int32):
            if np.iinfo(target).min <= lo and hi <= np.iinfo(target).max:
                return wide.astype(target)
        return wide.astype(np.float64)
    out = arr.astype(np.float32)
    if np.all(slopes == slopes[0]) and np.all(inters == inters[0]):
        out *= np.float32(slopes[0])
        out += np.float32(inters[0])
    else:
        out *= slopes.astype(np.float32).reshape(bshape)
        out += inters.astype(np.float32).reshape(bshape)
    return out
