"""The errors medpipe shows to people.

Every error a user can cause (bad input, bad pipeline file, wrong bundle) is a
``MedpipeError`` whose message is one sentence naming the file/series/stage and the
problem. The CLI prints ``error: <message>`` and exits with a non-zero code; nothing
else (no traceback) reaches the user unless ``MEDPIPE_DEBUG=1``.
"""

from __future__ import annotations

__all__ = [
    "MedpipeError",
    "InputError",
    "DicomError",
    "PipelineError",
    "BundleError",
    "GeometryError",
    "ResourceError",
]


class MedpipeError(Exception):
    """Base class: its message is meant for a person and says what to do where possible."""

    exit_code: int = 2


class InputError(MedpipeError):
    """A file or folder the user gave us is missing, unreadable or malformed."""


class DicomError(InputError):
    """A DICOM file or series cannot be turned into a trustworthy volume."""


class GeometryError(MedpipeError):
    """Two images that must share a grid do not, or a transform cannot be inverted."""


class PipelineError(MedpipeError):
    """A pipeline file is invalid or a stage failed."""


class BundleError(MedpipeError):
    """A model bundle is missing files, inconsistent, or meant for another modality."""


class ResourceError(MedpipeError):
    """Not enough memory/disk for the requested work (the message says which option helps)."""
