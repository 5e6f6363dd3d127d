"""MRI physics for reconstruction: centred FFTs, SENSE operators, sampling masks, coil maps,
k-space simulation and the compressed-sensing baselines.

Axis convention (fastMRI's): multi-coil k-space is ``(coils, rows, columns)`` per slice; rows
are the readout (always fully sampled), columns the phase-encoding direction, which is where
1D masks select lines. Images have the same (rows, columns) layout.
"""

from __future__ import annotations

from medpipe.recon.fft import fft1c, fft2c, ifft1c, ifft2c
from medpipe.recon.masks import center_fraction_for, make_mask, mask_acceleration
from medpipe.recon.sense import SenseOp, rss, sense_combine

__all__ = ["fft1c", "fft2c", "ifft1c", "ifft2c", "make_mask", "mask_acceleration", "center_fraction_for",
           "SenseOp", "rss", "sense_combine"]
