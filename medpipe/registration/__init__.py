"""Deformable registration: world-coordinate warping, velocity integration, losses, classic
baselines (SimpleITK) and learned models (MICDIR, VoxelMorph), behind one ``register()``."""

from __future__ import annotations

from medpipe.registration.field import DisplacementField, warp_image

__all__ = ["DisplacementField", "warp_image"]
