"""Where medpipe keeps what it can rebuild: converted OpenVINO models, imported nnU-Net
models, measured speed decisions. ``$MEDPIPE_CACHE`` (default ``~/.cache/medpipe``)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["user_cache"]


def user_cache(*parts: str) -> Path:
    """``$MEDPIPE_CACHE/<parts...>``, else ``~/.cache/medpipe/<parts...>`` (not created)."""
    base = os.environ.get("MEDPIPE_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "medpipe").joinpath(*parts)
