"""Built-in stage kinds; importing this package registers them (explicit list)."""

from __future__ import annotations

import importlib

_STAGE_MODULES: list[str] = [
]

for _m in _STAGE_MODULES:
    importlib.import_module(f"medpipe.pipeline.stages.{_m}")
