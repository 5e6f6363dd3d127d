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
    "load_channels",
]

for _m in _STAGE_MODULES:
    importlib.import_module(f"medpipe.pipeline.stages.{_m}")
