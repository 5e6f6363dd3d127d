"""Sliding-window inference engine: tile planning, Gaussian blending, precision/backend policy
(PyTorch or OpenVINO), streamed stitching (``predict``)."""

from __future__ import annotations

from medpipe.inference.gaussian import gaussian_importance_map
from medpipe.inference.precision import PrecisionPlan, resolve_backend, resolve_precision
from medpipe.inference.sliding_window import Prediction, memory_plan, mirror_combinations, predict
from medpipe.inference.tiling import TilePlan, pad_amounts, plan_tiles, tile_starts

__all__ = ["predict", "Prediction", "memory_plan", "mirror_combinations", "gaussian_importance_map",
           "PrecisionPlan", "resolve_precision", "resolve_backend", "TilePlan", "plan_tiles", "tile_starts", "pad_amounts"]
