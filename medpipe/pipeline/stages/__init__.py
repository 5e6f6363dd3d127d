"""Built-in stage kinds; importing this package registers them (explicit list)."""

from __future__ import annotations

import importlib

_STAGE_MODULES: list[str] = [
    "load_study",
    "geometry",
    "normalize",
    "restore",
    "postprocess",
    "statistics",
    "preview",
    "write",
    "segment",
    "segment_image",
    "segment_bundles",
    "register",
    "warp",
    "propagate_labels",
    "load_image",
    "difference",
    "load_kspace",
    "recon",
    "recon_report",
    "write_image",
    "load_channels",
    "region_volumes",
    "mri_report",
]

for _m in _STAGE_MODULES:
    importlib.import_module(f"medpipe.pipeline.stages.{_m}")
