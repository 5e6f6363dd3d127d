"""Turn a selected ``SeriesInfo`` into an ``Image`` (RAS+), or refuse with one sentence.

The affine is built in LPS from the sorted slice positions and converted to RAS+ once,
here. Irregular stacks are refused by default (a silently wrong volume is worse than no
volume); ``resample_irregular=True`` resamples them and records what was done.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from medpipe.errors import DicomError
from medpipe.image import Image, ImageMeta
from medpipe.io.dicom.geometry import LPS_TO_RAS, analyse_stack
from medpipe.io.dicom.model import SeriesInfo, StudyScan
from medpipe.io.dicom.pixels import read_stored_frames, rescale_frames
from medpipe.io.dicom.resample import resample_stack
from medpipe.io.dicom.scan import scan_study

__all__ = ["load_series", "load_study", "read_image"]


def _progress_bar(enabled: bool, total: int, what: str):
    """A (callback, context manager) pair; the callback advances one slice."""
    import contextlib

    if not enabled or total < 50:
        return None, contextlib.nullcontext()
    from rich.progress import Progress

    bar = Progress(transient=True)
    task = bar.add_task(f"loading {what}", total=total)
    return (lambda: bar.advance(task)), bar


def check_loadable(info: SeriesInfo, *, resample_irregular: bool = False) -> None:
    """Refuse, from the headers alone, a series that cannot be loaded as asked."""
    if info.fatal:
        raise DicomError(f"{info.label()} {info.fatal[0]}")
    if info.problems and not resample_irregular:
        raise DicomError(
            f"{info.label()} has an irregular slice stack: {'; '.join(info.problems)}; "
            "pass --resample-irregular (resample_irregular=True) to resample it onto a regular grid"
        )


def load_series(info: SeriesInfo, *, resample_irregular: bool = False, progress: bool = False) -> Image:
    """Read one volume; raise DicomError naming the series if it cannot be trusted.

    Example:
        >>> img = load_series(scan_study("study/").series[0])       # doctest: +SKIP
    """
    check_loadable(info, resample_irregular=resample_irregular)
    frames = info.frames
    f0 = frames[0]
    ps = f0.pixel_spacing or (1.0, 1.0)
    fallback = f0.spacing_between_slices or f0.slice_thickness or 1.0
    geo = analyse_stack(f0.iop, np.stack([f.ipp for f in frames]), ps, fallback, f0.gantry_tilt)
    if not np.array_equal(geo.order, np.arange(len(frames))):  # scan_study sorts already
        frames = [frames[i] for i in geo.order]
        info = dataclasses.replace(info, frames=frames)
        geo = analyse_stack(f0.iop, np.stack([f.ipp for f in frames]), ps, fallback, f0.gantry_tilt)
    advance, bar = _progress_bar(progress, len(frames), info.label())
    with bar:
        stored = read_stored_frames(info, advance)
    stack = rescale_frames(stored, frames)
    warnings = list(info.warnings)
    aff_lps = geo.affine_lps()
    if geo.problems:
        stack, aff_lps, notes = resample_stack(stack, geo)
        warnings.extend(notes)
    # (K, rows, cols[, 3]) -> (C, I=cols, J=rows, K)
    if stack.ndim == 3:
        array = stack.transpose(2, 1, 0)[None]
    else:
        array = stack.transpose(3, 2, 1, 0)
    affine = LPS_TO_RAS @ aff_lps
    extra = dict(info.tags)
    extra.update(
        series_id=info.id,
        split_reason=info.split_reason,
        warnings=warnings,
        SOPInstanceUIDs=[f.sop_instance_uid for f in frames] if not geo.problems else [],
        FrameNumbers=[f.frame for f in frames] if f0.n_frames > 1 and not geo.problems else [],
        resampled=bool(geo.problems),
    )
    meta = ImageMeta(
        modality=info.modality,
        series_uid=info.series_uid,
        description=info.description,
        source_files=info.files,
        extra=extra,
    )
    return Image(array, affine, meta)


def _default_series(scan: StudyScan) -> list[SeriesInfo]:
    usable = [s for s in scan.series if not s.fatal]
    if not usable:
        s = scan.series[0]
        raise DicomError(f"{s.label()} {s.fatal[0]}")
    return usable


def load_study(
    path: str | Path,
    selector=None,
    *,
    resample_irregular: bool = False,
    progress: bool = False,
) -> list[Image]:
    """Scan ``path`` and load the series ``selector`` picks (all loadable ones by default)."""
    scan = scan_study(path, progress=progress)
    scan.require_images()
    chosen = selector.select(scan) if selector is not None else _default_series(scan)
    return [load_series(s, resample_irregular=resample_irregular, progress=progress) for s in chosen]


def choose_series(scan: StudyScan, selector=None, *, resample_irregular: bool = False) -> SeriesInfo:
    """The one series ``selector`` picks from a scan, checked as far as headers allow
    (nothing loadable, several series left, irregular geometry without resampling)."""
    scan.require_images()
    chosen = selector.select(scan) if selector is not None else _default_series(scan)
    if len(chosen) != 1:
        listing = "; ".join(f"{s.label()} {s.modality} {'x'.join(map(str, s.size))}" for s in chosen)
        raise DicomError(
            f"{scan.root} holds {len(chosen)} image series ({listing}); choose one with a series selector "
            "(e.g. modality, description, series_number or largest=True)"
        )
    check_loadable(chosen[0], resample_irregular=resample_irregular)
    return chosen[0]


def is_volume_file(path: str | Path) -> bool:
    """A NIfTI/NRRD/MHA file (read as one volume), as opposed to DICOM."""
    from medpipe.io.volumes import VOLUME_SUFFIXES

    p = Path(path)
    return p.is_file() and any(p.name.lower().endswith(s) for s in VOLUME_SUFFIXES)


def read_image(path: str | Path, selector=None, *, resample_irregular: bool = False) -> Image:
    """One image from a NIfTI/NRRD/MHA file or a DICOM folder/file/zip holding one series.

    A DICOM study with several series needs a ``selector`` (``SeriesSelector``).
    """
    from medpipe.io.volumes import read_volume

    if is_volume_file(path):
        return read_volume(Path(path))
    info = choose_series(scan_study(Path(path)), selector, resample_irregular=True)
    return load_series(info, resample_irregular=resample_irregular)
