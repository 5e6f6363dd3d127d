"""The separable resampler stays exact inside a bf16 autocast region (the torch bf16 backend's
streamed export calls it there; before, it returned bf16 tensors numpy cannot hold)."""

from __future__ import annotations

import numpy as np
import torch

from medpipe.transforms.interpolation import axis_taps, resample_separable


def test_resample_separable_ignores_bf16_autocast() -> None:
    a = np.random.default_rng(0).random((2, 8, 8, 6)).astype(np.float32)
    taps = axis_taps(8, 12, 8 / 12, 0.0, 1)
    ident = axis_taps(6, 6, 1.0, 0.0, 0)
    ref = resample_separable(a, (taps, taps, ident))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = resample_separable(a, (taps, taps, ident))
    assert got.dtype == np.float32 and np.array_equal(got, ref)
