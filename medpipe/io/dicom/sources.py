"""Where DICOM bytes come from: plain files (any name, no extension needed), zip members
(read in memory — we never extract into the user's folder) and DICOMDIR references.

``iter_sources(path)`` turns whatever the user pointed at into a flat list of ``Source``
objects; nothing here parses DICOM beyond recognising a DICOMDIR.
"""

from __future__ import annotations

import functools
import io
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from medpipe.errors import InputError

__all__ = ["Source", "iter_sources", "is_dicomdir_name"]


@dataclass(frozen=True)
class Source:
    """A file on disk, or a member of a zip archive on disk."""

    path: Path
    member: str | None = None

    @property
    def label(self) -> str:
        """How the source is named in messages and sidecars."""
        return f"{self.path}!{self.member}" if self.member else str(self.path)

    @property
    def on_disk(self) -> bool:
        return self.member is None

    def open(self) -> BinaryIO:
        """A readable binary stream (a real file, or the zip member's bytes in memory)."""
        if self.member is None:
            return open(self.path, "rb")
        return io.BytesIO(_open_zip(self.path, self.path.stat().st_mtime_ns).read(self.member))

    def read_bytes(self) -> bytes:
        with self.open() as fh:
            return fh.read()


@functools.lru_cache(maxsize=4)
def _open_zip(path: Path, mtime_ns: int) -> zipfile.ZipFile:
    """One open archive per zip (re-reading the central directory per member is quadratic)."""
    return zipfile.ZipFile(path)


def is_dicomdir_name(name: str) -> bool:
    return name.upper() == "DICOMDIR"


def _is_zip(path: Path) -> bool:
    if path.suffix.lower() == ".zip":
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def _zip_members(path: Path) -> Iterator[Source]:
    try:
        with zipfile.ZipFile(path) as zf:
            names = [i.filename for i in zf.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{path} is not a readable zip archive ({exc})") from exc
    for name in sorted(names):
        base = name.rsplit("/", 1)[-1]
        if base.startswith(".") or name.startswith("__MACOSX/") or is_dicomdir_name(base):
            continue
        yield Source(path, name)


def _dicomdir_references(path: Path) -> list[Source]:
    """Files a DICOMDIR points at (ReferencedFileID is relative to the DICOMDIR's folder)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:
        raise InputError(f"{path} is not a readable DICOMDIR ({exc})") from exc
    out = []
    for rec in ds.get("DirectoryRecordSequence", []):
        ref = rec.get("ReferencedFileID")
        if not ref:
            continue
        parts = [ref] if isinstance(ref, str) else list(ref)
        out.append(Source(path.parent.joinpath(*parts)))
    return out


def iter_sources(path: str | Path) -> list[Source]:
    """Every candidate file under ``path`` (a folder, a file, a zip or a DICOMDIR), sorted."""
    root = Path(path)
    if not root.exists():
        raise InputError(f"{root} does not exist")
    if root.is_file():
        if is_dicomdir_name(root.name):
            return _dicomdir_references(root)
        if _is_zip(root):
            return list(_zip_members(root))
        return [Source(root)]
    if not os.access(root, os.R_OK | os.X_OK):
        raise InputError(f"{root} is a folder medpipe may not read (permission denied)")
    out: list[Source] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or is_dicomdir_name(name):
                continue
            p = Path(dirpath) / name
            if _is_zip(p):
                try:
                    out.extend(_zip_members(p))
                    continue
                except InputError:
                    pass  # counted as a non-DICOM file by the scanner
            out.append(Source(p))
    return out
