"""Label names and colours as the stages see them (from ``meta.extra``, with fallbacks).

Label maps carry ``meta.extra["labels"] = {value: name}`` and optionally
``meta.extra["colors"] = {value: [r, g, b]}``; after a JSON round trip the keys are
strings, so everything here normalises them to ``int``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medpipe.image import Image

__all__ = ["label_names", "label_colors", "present_labels", "structure_values"]

# A qualitative palette (matplotlib tab20 order, 0-255) for labels without a colour.
_PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
]  # fmt: skip


def _int_keys(d: Any) -> dict[int, Any]:
    if not isinstance(d, dict):
        return {}
    out = {}
    for k, v in d.items():
        try:
            out[int(k)] = v
        except (TypeError, ValueError):
            continue
    return out


def present_labels(labels: Image) -> list[int]:
    """Non-zero label values present in the map, ascending."""
    return [int(v) for v in np.unique(labels.array) if v != 0]


def structure_values(labels: Image) -> list[int]:
    """Every structure of a label map, ascending: the named ones (present or not) and any other
    non-zero value present; background is not a structure."""
    named = {int(k) for k in (labels.meta.extra.get("labels") or {})} - {0}
    return sorted(named | set(present_labels(labels)))


def label_names(labels: Image, values: list[int] | None = None) -> dict[int, str]:
    """``value -> name`` for ``values`` (default: those present), ``label_<v>`` when unnamed."""
    known = {k: str(v) for k, v in _int_keys(labels.meta.extra.get("labels")).items()}
    values = present_labels(labels) if values is None else values
    return {v: known.get(v, f"label_{v}") for v in values}


def label_colors(labels: Image, values: list[int] | None = None) -> dict[int, tuple[int, int, int]]:
    """``value -> (r, g, b)`` in 0-255 for ``values`` (default: those present)."""
    known = _int_keys(labels.meta.extra.get("colors"))
    values = present_labels(labels) if values is None else values
    out = {}
    for v in values:
        c = known.get(v)
        if c is not None and len(c) == 3:
            out[v] = tuple(int(round(float(x))) for x in c)
        else:
            out[v] = _PALETTE[(v - 1) % len(_PALETTE)]
    return out  # type: ignore[return-value]
