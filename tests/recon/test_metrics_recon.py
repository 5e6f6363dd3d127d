"""SSIM/PSNR/NMSE exactly as fastMRI computes them, checked against scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medpipe.metrics import nmse, psnr, ssim
from medpipe.training.recon_loss import ssim_loss

skm = pytest.importorskip("skimage.metrics")


def test_ssim_psnr_nmse_equal_fastmri_definitions():
    rng = np.random.default_rng(0)
    gt = np.abs(rng.standard_normal((4, 48, 40))).cumsum(1)
    pred = gt + 0.3 * rng.standard_normal(gt.shape)
    ref_ssim = np.mean([skm.structural_similarity(g, p, data_range=gt.max()) for g, p in zip(gt, pred, strict=True)])
    assert abs(ssim(gt, pred) - ref_ssim) < 1e-9
    assert abs(psnr(gt, pred) - skm.peak_signal_noise_ratio(gt, pred, data_range=gt.max())) < 1e-9
    assert abs(nmse(gt, pred) - np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2) < 1e-12
    assert ssim(gt, gt) == pytest.approx(1.0) and nmse(gt, gt) == 0.0 and psnr(gt, gt) == float("inf")
    with pytest.raises(ValueError, match="differs from the reference"):
        ssim(gt, pred[:, :10])


def test_ssim_loss_is_one_minus_ssim():
    rng = np.random.default_rng(1)
    gt = np.abs(rng.standard_normal((2, 40, 40))).astype(np.float32)
    pred = (gt + 0.2 * rng.standard_normal(gt.shape)).astype(np.float32)
    loss = ssim_loss(torch.from_numpy(pred), torch.from_numpy(gt), torch.tensor([gt.max()] * 2))
    ours = np.mean([ssim(g[None], p[None], data_range=gt.max()) for g, p in zip(gt, pred, strict=True)])
    assert abs((1 - loss.item()) - ours) < 1e-4
