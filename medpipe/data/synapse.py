"""Synapse multi-organ (BTCV, as TransUNet preprocessed it) label numbering, for 2D jobs.

The 2D papers (TransUNet, ParaTransCNN, TransDAE, DAE-Former) all report on Synapse with
these 8 label values, so a 2D bundle with the same numbering compares table for table
and a model trained on real Synapse data drops into the same pipeline. The CT phantom
has no gallbladder (value 4 stays declared and empty) and its vertebrae are not a
Synapse organ (they become background).
"""

from __future__ import annotations

import numpy as np

from medpipe.image import Image

__all__ = ["SYNAPSE_LABELS", "SYNAPSE_COLORS", "relabel_by_name"]

SYNAPSE_LABELS: dict[int, str] = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 4: "gallbladder", 5: "liver",
                                  6: "stomach", 7: "aorta", 8: "pancreas"}

# Colours for the Synapse organs the CT phantom palette lacks (3D Slicer's gallbladder green).
SYNAPSE_COLORS: dict[str, tuple[int, int, int]] = {"gallbladder": (139, 150, 98)}


def relabel_by_name(seg: Image, source: dict[int, str], target: dict[int, str]) -> Image:
    """``seg`` (values named by ``source``) renumbered to ``target`` by label name; names
    ``target`` lacks become background (0)."""
    by_name = {n: k for k, n in target.items()}
    lut = np.zeros(max(max(source), int(seg.array.max(initial=0))) + 1, dtype=np.uint8)
    for value, name in source.items():
        lut[value] = by_name.get(name, 0)
    out = seg.with_array(lut[seg.array.astype(np.int64)], is_label=True)
    out.meta.extra["labels"] = dict(target)
    out.meta.extra.pop("colors", None)
    return out
