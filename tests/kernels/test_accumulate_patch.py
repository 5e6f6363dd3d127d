"""Gaussian-weighted patch accumulation: reference against numpy, Triton against the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _interpret import run_interpreted

from medpipe.kernels import accumulate_patch


def test_reference_adds_weighted_logits_at_the_offset_in_fp32():
    rng = np.random.default_rng(0)
    buf = rng.normal(size=(3, 9, 10, 11)).astype(np.float32)
    wbuf = rng.uniform(size=(9, 10, 11)).astype(np.float32)
    logits = torch.randn(3, 4, 5, 6).bfloat16()
    g = torch.rand(4, 5, 6)
    exp_buf, exp_w = buf.copy(), wbuf.copy()
    exp_buf[:, 2:6, 5:10, 1:7] += g.numpy() * logits.float().numpy()
    exp_w[2:6, 5:10, 1:7] += g.numpy()
    tb, tw = torch.from_numpy(buf), torch.from_numpy(wbuf)
    accumulate_patch(tb, tw, logits, g, (2, 5, 1))
    np.testing.assert_allclose(tb.numpy(), exp_buf, atol=1e-6)
    np.testing.assert_allclose(tw.numpy(), exp_w, atol=1e-7)


def test_running_mean_mode_keeps_the_weighted_mean():
    torch.manual_seed(0)
    buf, w = torch.zeros(2, 6, 6, 6, dtype=torch.float16), torch.zeros(6, 6, 6)
    a, b = torch.randn(2, 6, 6, 6), torch.randn(2, 6, 6, 6)
    ga, gb = torch.rand(6, 6, 6) * 1e-9 + 1e-12, torch.rand(6, 6, 6) * 1e-9 + 1e-12  # would underflow in fp16 sums
    accumulate_patch(buf, w, a, ga, (0, 0, 0), running_mean=True)
    accumulate_patch(buf, w, b, gb, (0, 0, 0), running_mean=True)
    expected = (ga * a + gb * b) / (ga + gb)
    torch.testing.assert_close(buf.float(), expected, atol=2e-3, rtol=2e-3)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="gaussian"):
        accumulate_patch(torch.zeros(2, 8, 8, 8), None, torch.zeros(2, 4, 4, 4), torch.zeros(4, 4, 5), (0, 0, 0))
    with pytest.raises(ValueError, match="weight buffer"):
        accumulate_patch(torch.zeros(2, 8, 8, 8), None, torch.zeros(2, 4, 4, 4), torch.zeros(4, 4, 4), (0, 0, 0),
                         running_mean=True)


def test_triton_kernel_matches_reference_under_interpreter():
    out = run_interpreted("""
        import json, torch
        from medpipe.kernels import accumulate_patch
        torch.manual_seed(0)
        errs = []
        cases = [((3, 9, 10, 11), (5, 7, 9), (2, 1, 0), torch.float32, torch.float32, False),
                 ((2, 16, 16, 16), (8, 8, 8), (8, 0, 3), torch.bfloat16, torch.float32, False),
                 ((4, 7, 6, 13), (3, 5, 7), (1, 1, 6), torch.float32, torch.float16, True),
                 ((1, 5, 5, 5), (5, 5, 5), (0, 0, 0), torch.float16, torch.float32, True)]
        for bshape, patch, off, ldt, bdt, mean in cases:
            buf = torch.randn(bshape).to(bdt)
            w = torch.rand(bshape[1:]) + 0.5
            logits = torch.randn(bshape[0], *patch).to(ldt)
            g = torch.rand(patch)
            b1, w1, b2, w2 = buf.clone(), w.clone(), buf.clone(), w.clone()
            accumulate_patch(b1, w1, logits, g, off, running_mean=mean, backend="triton")
            accumulate_patch(b2, w2, logits, g, off, running_mean=mean, backend="reference")
            errs.append(max(float((b1.float() - b2.float()).abs().max()), float((w1 - w2).abs().max())))
        # a strided (non-contiguous) logits view, as the engine passes when a tile wraps the ring buffer
        buf, w = torch.zeros(2, 6, 6, 6), torch.zeros(6, 6, 6)
        full = torch.randn(2, 6, 6, 8)
        b1, w1, b2, w2 = buf.clone(), w.clone(), buf.clone(), w.clone()
        g = torch.rand(6, 6, 8)
        accumulate_patch(b1, w1, full[..., 3:8], g[..., 3:8], (0, 0, 1), backend="triton")
        accumulate_patch(b2, w2, full[..., 3:8], g[..., 3:8], (0, 0, 1), backend="reference")
        errs.append(float((b1 - b2).abs().max()))
        print(json.dumps({"errs": errs}))
    """)
    assert len(out["errs"]) == 5
    assert max(out["errs"][:2] + out["errs"][4:]) < 1e-5  # fp32 buffers
    assert max(out["errs"][2:4]) < 2e-3  # fp16 buffer: one rounding either side
