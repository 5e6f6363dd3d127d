"""``SeriesSelector``: which series of a study a pipeline wants (like MONAI Deploy's rules).

A pydantic model so it can sit in a pipeline YAML file and be validated with it:

    input:
      series: {modality: CT, description: "abdomen|venous", orientation: axial, min_slices: 50, largest: true}
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

from medpipe.errors import DicomError
from medpipe.io.dicom.model import SeriesInfo, StudyScan

__all__ = ["SeriesSelector"]


class SeriesSelector(BaseModel):
    """Filters (all must hold) and a tie-break (``largest`` or ``first``)."""

    model_config = ConfigDict(extra="forbid")

    modality: str | None = None
    description: str | None = None  # regular expression, case-insensitive, searched anywhere
    orientation: Literal["axial", "sagittal", "coronal", "oblique"] | None = None
    min_slices: int | None = None
    series_number: int | None = None
    uid: str | None = None  # prefix or suffix of the SeriesInstanceUID or volume id
    largest: bool = False  # keep only the series with the most voxels
    first: bool = False  # keep only the lowest series number

    @field_validator("description")
    @classmethod
    def _valid_regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"description {v!r} is not a valid regular expression ({exc})") from exc
        return v

    def matches(self, s: SeriesInfo) -> bool:
        if self.modality and s.modality.upper() != self.modality.upper():
            return False
        if self.description and not re.search(self.description, s.description, re.IGNORECASE):
            return False
        if self.orientation and s.orientation != self.orientation:
            return False
        if self.min_slices is not None and s.n_slices < self.min_slices:
            return False
        if self.series_number is not None and s.series_number != self.series_number:
            return False
        if self.uid:
            ids = (s.id, s.series_uid)
            if not any(i.startswith(self.uid) or i.endswith(self.uid) for i in ids):
                return False
        return True

    def describe(self) -> str:
        fields = self.model_dump(exclude_defaults=True)
        return ", ".join(f"{k}={v!r}" for k, v in fields.items()) or "no filter"

    def select(self, scan: StudyScan) -> list[SeriesInfo]:
        """The matching series (one when a tie-break is set); DicomError listing the study if none."""
        hits = [s for s in scan.series if self.matches(s)]
        if not hits:
            scan.require_images()
            found = "; ".join(
                f"#{s.series_number} {s.modality} '{s.description}' {s.orientation} {s.n_slices} slices"
                for s in scan.series
            )
            raise DicomError(f"no series in {scan.root} matches {self.describe()}; found: {found}")
        if self.largest:
            hits = [max(hits, key=lambda s: (s.size[0] * s.size[1] * s.size[2], -(s.series_number or 0)))]
        elif self.first:
            hits = [min(hits, key=lambda s: (s.series_number if s.series_number is not None else 1 << 30, s.id))]
        return hits
