"""``run.json``: what ran on which study, with which code, and how it went.

The record is written atomically after every stage, so a crashed run leaves a readable
record that says which stage was running; the runner resumes from it. Fields are
documented in docs/pipelines.md.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import sys
import threading
from importlib import metadata
from pathlib import Path
from typing import Any

from medpipe.io.atomic import atomic_path, locked
from medpipe.pipeline.artifacts import json_default_lenient

__all__ = [
    "RUN_SCHEMA",
    "now_iso",
    "software_versions",
    "PeakMemory",
    "read_run_record",
    "write_run_record",
    "locked",
    "published_hashes",
]

RUN_SCHEMA = 1


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def software_versions() -> dict[str, str | None]:
    """Versions of the code that shape results (imports nothing heavy)."""
    import medpipe

    out: dict[str, str | None] = {"medpipe": medpipe.__version__, "python": platform.python_version()}
    for dist in ("torch", "monai", "numpy", "nibabel", "SimpleITK", "pydicom"):
        try:
            out[dist.lower()] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist.lower()] = None
    return out


def host_info() -> dict[str, Any]:
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "pid": os.getpid(),
        "argv": list(sys.argv),
    }


def _rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


class PeakMemory:
    """Peak resident memory while the ``with`` block runs (sampled every 20 ms).

    ``getrusage`` only knows the peak of the whole process lifetime; a sampler gives the
    peak of one stage. The lifetime peak is kept too, as a lower bound check.
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self.peak = _rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def peak_mb(self) -> float:
        return round(self.peak / 2**20, 1)


def process_peak_rss_mb() -> float:
    """Lifetime peak RSS of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def read_run_record(run_dir: Path) -> dict[str, Any] | None:
    p = Path(run_dir) / "run.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_run_record(run_dir: Path, record: dict[str, Any]) -> None:
    with atomic_path(Path(run_dir) / "run.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2, default=json_default_lenient) + "\n")




# What makes a DICOM object a new instance each time it is written (DICOM requires fresh UIDs
# for a new object, and its creation time): left out when comparing two runs' results.
_DICOM_INSTANCE_KEYWORDS = frozenset({
    "SOPInstanceUID", "MediaStorageSOPInstanceUID", "SeriesInstanceUID", "DimensionOrganizationUID", "TrackingUID",
    "InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime", "SeriesDate", "SeriesTime",
    "ContributionDateTime",
})


def _dicom_content_hash(path: Path) -> str:
    """Hash of a DICOM file without its instance identity (UIDs minted and times stamped at writing)."""
    import io

    import pydicom

    ds = pydicom.dcmread(path)

    def blank(d: Any) -> None:
        for el in d:
            if el.keyword in _DICOM_INSTANCE_KEYWORDS:
                el.value = ""
            elif el.VR == "SQ":
                for item in el.value:
                    blank(item)

    blank(ds)
    blank(ds.file_meta)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    import hashlib

    return "dicom:" + hashlib.blake2b(buf.getvalue(), digest_size=16).hexdigest()


def published_hashes(run_dir: str | Path) -> dict[str, str]:
    """Content hash of every file a study's run published (``artifacts/``), plus each stage
    record's cache key and file list (its timings and pid left out): equal for two run
    folders exactly when they hold the same results, whichever engine made them. A DICOM
    file (``.dcm``: the SEG) is hashed without the UIDs and times that make each writing a
    new DICOM instance; every other file byte for byte."""
    from medpipe.pipeline.cache import hash_file

    root = Path(run_dir)
    out: dict[str, str] = {}
    for f in sorted((root / "artifacts").rglob("*")):
        rel = f.relative_to(root)
        if not f.is_file() or any(p.startswith(".") for p in rel.parts):
            continue
        if f.name == "_record.json":
            rec = json.loads(f.read_text())
            out[str(rel)] = json.dumps({k: rec.get(k) for k in ("key", "files", "path", "hash")}, sort_keys=True)
        elif f.suffix.lower() == ".dcm":
            out[str(rel)] = _dicom_content_hash(f)
        else:
            out[str(rel)] = hash_file(f)
    return out
