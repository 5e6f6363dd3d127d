"""DICOM study ingestion: scan, split into volumes, select, load as RAS+ ``Image``.

Example:
    >>> from medpipe.io.dicom import scan_study, load_series, SeriesSelector
    >>> scan = scan_study("study/")                                   # doctest: +SKIP
    >>> ct = load_series(SeriesSelector(modality="CT", largest=True).select(scan)[0])  # doctest: +SKIP
"""

from __future__ import annotations

from medpipe.io.dicom.load import (
    check_loadable,
    choose_series,
    is_volume_file,
    load_series,
    load_study,
    read_image,
)
from medpipe.io.dicom.model import FrameRecord, NonImageObject, SeriesInfo, StudyScan
from medpipe.io.dicom.scan import scan_study
from medpipe.io.dicom.select import SeriesSelector
from medpipe.io.dicom.sidecar import sidecar_dict, write_sidecar

__all__ = [
    "check_loadable",
    "choose_series",
    "is_volume_file",
    "scan_study",
    "load_series",
    "load_study",
    "read_image",
    "SeriesSelector",
    "StudyScan",
    "SeriesInfo",
    "NonImageObject",
    "FrameRecord",
    "sidecar_dict",
    "write_sidecar",
]
