"""medpipe: medical-imaging pipelines on hospital studies."""

from __future__ import annotations

__version__ = "0.1.0"

from medpipe.errors import MedpipeError  # noqa: E402
from medpipe.image import Image, ImageMeta  # noqa: E402

__all__ = ["Image", "ImageMeta", "MedpipeError", "__version__"]
