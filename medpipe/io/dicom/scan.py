"""``scan_study``: find every image volume and every other DICOM object under a path.

Headers only — pixels are read later, for the series someone actually selects. Files
that are not DICOM are counted and skipped; DICOM files we cannot use are listed with
the reason, so one broken file never hides the rest of the study.
"""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from medpipe.io.dicom.headers import HeaderResult, read_header, read_sidecar_tags
from medpipe.io.dicom.model import FrameRecord, StudyScan
from medpipe.io.dicom.series import SeriesHeader, build_series
from medpipe.io.dicom.sources import iter_sources

__all__ = ["scan_study"]


def scan_study(path: str | Path, *, progress: bool = False) -> StudyScan:
    """Scan a folder, file, zip archive or DICOMDIR recursively (headers only).

    Example:
        >>> scan = scan_study("study/")                      # doctest: +SKIP
        >>> [(s.series_number, s.description, s.size) for s in scan.series]  # doctest: +SKIP
    """
    root = Path(path)
    sources = iter_sources(root)
    scan = StudyScan(root=root)
    frames_by_uid: dict[str, list[FrameRecord]] = defaultdict(list)
    headers: dict[str, SeriesHeader] = {}
    sop_seen: dict[tuple[str, int | None], str] = {}
    bad_files: dict[str, list[str]] = defaultdict(list)  # series uid -> "file: why"

    def consume(src_label: str, res: HeaderResult) -> None:
        if res.skipped:
            scan.skipped += 1
        elif res.error:
            scan.errors.append((src_label, res.error))
            if res.error_series_uid:
                bad_files[res.error_series_uid].append(f"{src_label} {res.error}")
            else:
                scan.orphan_errors.append((src_label, res.error))
        elif res.non_image is not None:
            scan.non_image.append(res.non_image)
        else:
            for fr in res.frames:
                key = (fr.sop_instance_uid, fr.frame)
                if fr.sop_instance_uid and key in sop_seen:
                    # The same instance twice (copied file, or listed in a zip and a folder).
                    continue
                sop_seen[key] = src_label
                frames_by_uid[fr.series_uid].append(fr)
            uid = res.frames[0].series_uid if res.frames else ""
            if res.frames and uid not in headers:
                headers[uid] = SeriesHeader(res.modality, res.description, res.series_number, {})

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(read_header, sources)
        if progress and len(sources) > 50:
            from rich.progress import Progress

            with Progress(transient=True) as bar:
                task = bar.add_task(f"scanning {len(sources)} files", total=len(sources))
                for src, res in zip(sources, results, strict=True):
                    consume(src.label, res)
                    bar.advance(task)
        else:
            for src, res in zip(sources, results, strict=True):
                consume(src.label, res)
    for uid, frames in frames_by_uid.items():  # key tags for the sidecar: one file per series
        headers[uid].tags = read_sidecar_tags(frames[0].source)
    scan.series = build_series(frames_by_uid, headers)
    for info in scan.series:  # a broken file must not silently shorten its series
        for msg in bad_files.get(info.series_uid, []):
            info.fatal.append(f"has an unusable file: {msg}")
    return scan
