"""Group frames into volumes: by SeriesInstanceUID, then split series that hold several.

One DICOM series often holds more than one volume — several echoes, a localiser in
three orientations, a time series (perfusion, cine, DCE) with every position repeated.
Stacking those naively gives the classic "interleaved garbage" volume. We split on
orientation, image size and echo, then on repeated positions (time points ordered by
TemporalPositionIdentifier, AcquisitionNumber, TriggerTime, AcquisitionTime, InstanceNumber).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from medpipe.io.dicom.geometry import analyse_stack, orientation_label
from medpipe.io.dicom.model import FrameRecord, SeriesInfo

__all__ = ["build_series", "SeriesHeader"]


class SeriesHeader:
    """Series-level fields taken from the first file seen of a series."""

    def __init__(self, modality: str, description: str, number: int | None, tags: dict[str, Any]):
        self.modality = modality
        self.description = description
        self.number = number
        self.tags = tags


def _iop_key(f: FrameRecord) -> tuple | None:
    return None if f.iop is None else tuple(np.round(f.iop, 4).tolist())


def _none_last(v: Any) -> tuple:
    return (1, 0.0) if v is None else (0, v)


def _temporal_sort_key(f: FrameRecord) -> tuple:
    return tuple(_none_last(v) for v in f.temporal) + (_none_last(f.instance_number),)


def _split_time(frames: list[FrameRecord]) -> list[list[FrameRecord]]:
    """Split a same-orientation/size/echo group whose positions repeat into time points."""
    if not frames or frames[0].ipp is None:
        return [frames]
    # An explicit temporal index (TemporalPositionIdentifier / TemporalPositionIndex) wins.
    tvals = {f.temporal[0] for f in frames if f.temporal and f.temporal[0] is not None}
    if len(tvals) > 1 and all(f.temporal and f.temporal[0] is not None for f in frames):
        by_t: dict[Any, list[FrameRecord]] = defaultdict(list)
        for f in frames:
            by_t[f.temporal[0]].append(f)
        return [by_t[t] for t in sorted(by_t)]
    by_pos: dict[tuple, list[FrameRecord]] = defaultdict(list)
    for f in frames:
        by_pos[tuple(np.round(f.ipp, 2).tolist())].append(f)
    counts = {len(v) for v in by_pos.values()}
    if len(counts) != 1 or counts == {1}:
        return [frames]  # no repetition, or uneven repetition (reported as duplicates later)
    m = counts.pop()
    volumes: list[list[FrameRecord]] = [[] for _ in range(m)]
    for group in by_pos.values():
        for k, f in enumerate(sorted(group, key=_temporal_sort_key)):
            volumes[k].append(f)
    return volumes


def _describe_split(key: tuple, t: int, n_t: int, keys: list[tuple]) -> str:
    parts = []
    iops = {k[0] for k in keys}
    sizes = {k[1] for k in keys}
    echoes = {k[2] for k in keys}
    if len(iops) > 1 and key[0] is not None:
        parts.append(f"orientation {orientation_label(np.cross(key[0][:3], key[0][3:]))}")
    if len(sizes) > 1:
        parts.append(f"size {key[1][1]}x{key[1][0]}")
    if len(echoes) > 1:
        te = key[2][-1] if key[2] else None
        parts.append(f"echo TE={te:g} ms" if te is not None else f"echo {key[2]}")
    if n_t > 1:
        parts.append(f"time point {t + 1}/{n_t}")
    return ", ".join(parts)


def build_series(frames_by_uid: dict[str, list[FrameRecord]], headers: dict[str, SeriesHeader]) -> list[SeriesInfo]:
    """Every volume in the study, ordered by series number then id."""
    out: list[SeriesInfo] = []
    for uid, frames in frames_by_uid.items():
        hdr = headers[uid]
        groups: dict[tuple, list[FrameRecord]] = defaultdict(list)
        for f in frames:
            echo = tuple(v for v in f.echo if v is not None)
            groups[(_iop_key(f), (f.rows, f.cols), echo)].append(f)
        keys = sorted(groups, key=lambda k: (k[2], k[1], str(k[0])))
        volumes: list[tuple[list[FrameRecord], str]] = []
        for key in keys:
            parts = _split_time(groups[key])
            for t, part in enumerate(parts):
                volumes.append((part, _describe_split(key, t, len(parts), keys)))
        infos = []
        for k, (part, reason) in enumerate(volumes, start=1):
            vid = uid if len(volumes) == 1 else f"{uid}.{k}"
            infos.append(_series_info(vid, uid, hdr, part, reason))
        _flag_interleaved_sizes(infos)
        out.extend(infos)
    out.sort(key=lambda s: (s.series_number if s.series_number is not None else 1 << 30, s.id))
    return out


def _series_info(vid: str, uid: str, hdr: SeriesHeader, frames: list[FrameRecord], reason: str) -> SeriesInfo:
    f0 = frames[0]
    tags = dict(hdr.tags)
    if f0.echo and f0.echo[-1] is not None:
        tags["EchoTime"] = f0.echo[-1]
    info = SeriesInfo(
        id=vid,
        series_uid=uid,
        modality=hdr.modality,
        description=hdr.description,
        series_number=hdr.number,
        frames=frames,
        size=(f0.cols, f0.rows, len(frames)),
        spacing=(1.0, 1.0, 1.0),
        orientation="unknown",
        split_reason=reason,
        tags=tags,
    )
    if reason:
        info.warnings.append(f"split from its series: {reason}")
    if f0.iop is None or any(f.ipp is None for f in frames):
        info.fatal.append("has no ImagePositionPatient/ImageOrientationPatient, so it has no 3D geometry")
        return info
    ps = f0.pixel_spacing
    if ps is None:
        ps = (1.0, 1.0)
        info.warnings.append("no PixelSpacing: assuming 1 mm pixels")
    if any(f.pixel_spacing is not None and np.abs(np.subtract(f.pixel_spacing, ps)).max() > 1e-4 for f in frames):
        info.fatal.append("slices have different PixelSpacing")
    if f0.samples_per_pixel not in (1, 3):
        info.fatal.append(f"has {f0.samples_per_pixel} samples per pixel (1 or 3 supported)")
    fallback = f0.spacing_between_slices or f0.slice_thickness or 1.0
    geo = analyse_stack(f0.iop, np.stack([f.ipp for f in frames]), ps, fallback, f0.gantry_tilt)
    info.frames = [frames[i] for i in geo.order]
    info.spacing = (geo.pixel_spacing[0], geo.pixel_spacing[1], geo.step)
    info.orientation = orientation_label(geo.normal)
    info.problems.extend(geo.problems)
    info.warnings.extend(geo.warnings)
    if len(frames) == 1 and not (f0.spacing_between_slices or f0.slice_thickness):
        info.warnings.append("single slice without SliceThickness: slice spacing set to 1 mm")
    return info


def _depth_range(info: SeriesInfo) -> tuple[float, float] | None:
    f0 = info.frames[0]
    if f0.iop is None or any(f.ipp is None for f in info.frames):
        return None
    n = np.cross(f0.iop[:3], f0.iop[3:])
    d = [float(f.ipp @ n) for f in info.frames]
    return min(d), max(d)


def _flag_interleaved_sizes(infos: list[SeriesInfo]) -> None:
    """Volumes of one series that differ only in image size but share a stack are one broken
    stack (a slice saved at the wrong size), not two volumes: refuse both, naming the sizes."""
    for a_i, a in enumerate(infos):
        for b in infos[a_i + 1 :]:
            fa, fb = a.frames[0], b.frames[0]
            if (fa.rows, fa.cols) == (fb.rows, fb.cols) or _iop_key(fa) != _iop_key(fb) or fa.echo != fb.echo:
                continue
            ra, rb = _depth_range(a), _depth_range(b)
            if ra is None or rb is None or ra[1] < rb[0] - 1e-3 or rb[1] < ra[0] - 1e-3:
                continue
            big, small = (a, b) if a.n_slices >= b.n_slices else (b, a)
            fg, fs = big.frames[0], small.frames[0]
            msg = (
                f"has slices of different sizes in one stack: {fg.cols}x{fg.rows} in {big.n_slices} file(s), "
                f"{fs.cols}x{fs.rows} in {small.n_slices} file(s) (e.g. {fs.source.label})"
            )
            for info in (a, b):
                if msg not in info.fatal:
                    info.fatal.append(msg)
