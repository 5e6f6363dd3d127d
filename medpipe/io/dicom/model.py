"""What a study scan found: per-frame header records, volumes (``SeriesInfo``), other objects.

A ``FrameRecord`` is one 2D slice as the header describes it — a single-frame file or one
frame of an enhanced multi-frame file — with everything needed to sort it, group it
into a volume and later fetch its pixels without parsing the header again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.io.dicom.sources import Source

__all__ = ["FrameRecord", "SeriesInfo", "NonImageObject", "StudyScan"]


@dataclass
class FrameRecord:
    """One 2D image plane: where its pixels live and how it sits in patient space (LPS)."""

    source: Source
    frame: int | None  # index into a multi-frame file, None for single-frame files
    n_frames: int
    sop_instance_uid: str
    series_uid: str
    rows: int
    cols: int
    iop: np.ndarray | None  # (6,) row cosine then column cosine, LPS
    ipp: np.ndarray | None  # (3,) centre of the first transmitted pixel, LPS mm
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns) in mm
    slope: float = 1.0
    intercept: float = 0.0
    echo: tuple[Any, ...] = ()  # (EchoNumbers, EchoTime) when present
    temporal: tuple[Any, ...] = ()  # (TemporalPosition, Acquisition#, TriggerTime, AcqTime, Instance#)
    instance_number: int = 0
    # pixel format (shared by every frame of a file)
    transfer_syntax: str = ""
    bits_allocated: int = 16
    bits_stored: int = 16
    pixel_representation: int = 0
    samples_per_pixel: int = 1
    photometric: str = "MONOCHROME2"
    planar_configuration: int = 0
    pixel_offset: int | None = None  # byte offset of the PixelData value (uncompressed files)
    pixel_length: int | None = None  # its declared length in bytes
    slice_thickness: float | None = None
    spacing_between_slices: float | None = None
    gantry_tilt: float = 0.0


@dataclass
class SeriesInfo:
    """One volume found in the study (a DICOM series, or one part of a split series)."""

    id: str
    series_uid: str
    modality: str
    description: str
    series_number: int | None
    frames: list[FrameRecord]
    size: tuple[int, int, int]  # (columns, rows, slices) = Image (I, J, K)
    spacing: tuple[float, float, float]  # mm along I, J, K
    orientation: str  # axial / sagittal / coronal / oblique
    split_reason: str = ""  # why this volume was split from its series ("echo 2", "time point 3"...)
    tags: dict[str, Any] = field(default_factory=dict)  # key header tags for the sidecar
    warnings: list[str] = field(default_factory=list)  # worth knowing, loading is fine
    problems: list[str] = field(default_factory=list)  # loading refuses unless resampling is allowed
    fatal: list[str] = field(default_factory=list)  # loading is impossible (no geometry, mixed sizes)

    @property
    def n_slices(self) -> int:
        return len(self.frames)

    @property
    def files(self) -> list[str]:
        """Source files in slice order (a multi-frame file appears once)."""
        seen: dict[str, None] = {}
        for f in self.frames:
            seen.setdefault(f.source.label, None)
        return list(seen)

    @property
    def uid_suffix(self) -> str:
        return self.id[-12:] if len(self.id) > 12 else self.id

    def label(self) -> str:
        """How people recognise this series in a message: number, description, UID suffix."""
        num = f"#{self.series_number}" if self.series_number is not None else "#?"
        desc = f" '{self.description}'" if self.description else ""
        return f"series {num}{desc} (UID …{self.uid_suffix})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "series_uid": self.series_uid,
            "series_number": self.series_number,
            "modality": self.modality,
            "description": self.description,
            "size": list(self.size),
            "spacing": [round(float(s), 6) for s in self.spacing],
            "orientation": self.orientation,
            "slices": self.n_slices,
            "files": len(self.files),
            "split_reason": self.split_reason,
            "warnings": list(self.warnings),
            "problems": list(self.problems) + list(self.fatal),
        }


@dataclass
class NonImageObject:
    """A DICOM object that is not an image volume (SR, SEG, RTSTRUCT, PR, KO, ...)."""

    file: str
    modality: str
    sop_class_uid: str
    sop_class_name: str
    description: str
    series_uid: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class StudyScan:
    """Everything ``scan_study`` found under ``root``."""

    root: Path
    series: list[SeriesInfo] = field(default_factory=list)
    non_image: list[NonImageObject] = field(default_factory=list)
    skipped: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    # errors in files whose series we cannot tell (unreadable): they may belong to any series
    orphan_errors: list[tuple[str, str]] = field(default_factory=list)

    def require_images(self) -> None:
        """Raise a DicomError that says what was there when no image series was found."""
        from medpipe.errors import DicomError

        if self.series:
            return
        parts = [f"{self.skipped} non-DICOM file(s) skipped"]
        if self.non_image:
            kinds = sorted({o.modality or o.sop_class_name for o in self.non_image})
            parts.append(f"{len(self.non_image)} non-image object(s) ({', '.join(kinds)})")
        if self.errors:
            f, why = self.errors[0]
            parts.append(f"{len(self.errors)} unusable DICOM file(s), e.g. {f} {why}")
        raise DicomError(f"no DICOM image series found in {self.root} ({'; '.join(parts)})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "series": [s.to_dict() for s in self.series],
            "non_image": [o.to_dict() for o in self.non_image],
            "skipped": self.skipped,
            "errors": [{"file": f, "reason": r} for f, r in self.errors],
        }
