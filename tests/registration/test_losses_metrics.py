"""Local NCC, diffusion, cycle consistency; Learn2Reg Jacobian, folding and SDlogJ."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medpipe.metrics import folding_percent, jacobian_determinant_l2r, registration_label_metrics, sdlogj
from medpipe.registration import spatial
from medpipe.registration.losses import _box_sum, cycle_consistency, diffusion, fixed_ncc_sums, local_ncc


def _blobs(seed=0, shape=(24, 24, 24)):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.random((1, 1, *shape)).astype(np.float32))
    return torch.nn.functional.avg_pool3d(x, 3, stride=1, padding=1)


def test_local_ncc_is_minus_one_for_affine_intensity_changes_and_worse_when_shifted():
    a = _blobs()
    assert float(local_ncc(a, 3.0 * a)) == pytest.approx(-1.0, abs=1e-3)
    assert float(local_ncc(a, 3.0 * a + 0.5)) < -0.99  # zero padding at the border breaks the offset slightly
    shifted = torch.roll(a, 2, dims=3)
    assert float(local_ncc(a, shifted)) > float(local_ncc(a, a)) + 0.2
    # our running-sum box sum (channels summed apart) equals the dense 9^3 window, gradient too
    two = torch.cat((a, a * a), dim=1).requires_grad_(True)
    dense = torch.nn.functional.conv3d(two, torch.ones(2, 1, 9, 9, 9), padding=4, groups=2)
    ours = _box_sum(two, 9)
    assert torch.allclose(ours, dense, rtol=1e-4, atol=1e-3)
    weights = torch.rand_like(dense)
    (g_dense,) = torch.autograd.grad((dense * weights).sum(), two)
    (g_ours,) = torch.autograd.grad((ours * weights).sum(), two)
    assert torch.allclose(g_ours, g_dense, rtol=1e-4, atol=1e-3)
    # a window of zeros sums to exactly zero, even after non-zero voxels on the same line
    padded = torch.nn.functional.pad(a, (0, 12))  # 12 zero voxels after the last axis
    assert float(_box_sum(padded, 9)[..., -3:].abs().max()) == 0.0
    # the fixed image's sums computed once (instance optimisation) give the same loss and gradient
    w = shifted.clone().requires_grad_(True)
    plain = local_ncc(a, w)
    (g_plain,) = torch.autograd.grad(plain, w)
    cached = local_ncc(a, w, fixed_sums=fixed_ncc_sums(a))
    (g_cached,) = torch.autograd.grad(cached, w)
    assert plain.item() == pytest.approx(cached.item(), abs=1e-6) and torch.allclose(g_plain, g_cached, atol=1e-7)


def test_diffusion_and_cycle_terms():
    d = torch.zeros(1, 3, 10, 10, 10)
    d[:, 0] = 2.0
    assert float(diffusion(d)) == 0.0
    assert float(cycle_consistency(d, -d)) < 1e-8  # a translation and its inverse
    assert float(cycle_consistency(d, d)) == pytest.approx(16.0, rel=1e-3)  # |4 voxels|^2 both ways
    ramp = spatial.identity_grid((10, 10, 10)) * 0.1
    assert float(diffusion(ramp)) == pytest.approx(0.01 / 3, rel=1e-4)  # one of 3 components changes per axis


def test_learn2reg_jacobian_folding_and_sdlogj_conventions():
    zero = np.zeros((3, 12, 12, 12), np.float32)
    jac = jacobian_determinant_l2r(zero)
    assert jac.shape == (8, 8, 8) and np.allclose(jac, 1.0)
    assert folding_percent(jac) == 0.0
    assert sdlogj(jac) == pytest.approx(0.0) and sdlogj(jac, "plain") == pytest.approx(0.0)
    # a field that reverses axis 0 in a slab folds exactly there
    fold = zero.copy()
    i = np.arange(12, dtype=np.float32)[:, None, None]
    fold[0] = np.where((i >= 5) & (i <= 7), -1.6 * (i - 6), 0.0)
    j = jacobian_determinant_l2r(fold)
    assert 0 < folding_percent(j) < 100 and j.min() <= 0
    # the "+3": J uniform in [0.5, 1.5] -> std(log(J+3)) ~ 0.07, std(log J) ~ 0.29
    rng = np.random.default_rng(0)
    u = rng.uniform(0.5, 1.5, 100_000)
    assert sdlogj(u) == pytest.approx(np.log(u + 3).std()) and 0.06 < sdlogj(u) < 0.08
    assert 0.27 < sdlogj(u, "plain") < 0.31
    with pytest.raises(ValueError, match="convention"):
        sdlogj(u, "other")


def test_propagated_label_metrics_follow_learn2reg_presence_rule():
    fixed = np.zeros((20, 20, 20), np.uint8)
    fixed[5:15, 5:15, 5:15] = 1
    warped = np.roll(fixed, 1, axis=0)
    moving = warped.copy()
    moving[0, 0, 0] = 3  # label 3 in moving only: NaN
    m = registration_label_metrics(warped, fixed, [1, 2, 3], spacing=(2.0, 1.0, 1.0), moving=moving)
    assert m[1]["dice"] == pytest.approx(0.9) and m[1]["hd95"] == pytest.approx(2.0)
    assert np.isnan(m[2]["dice"]) and np.isnan(m[3]["dice"])


@pytest.mark.parametrize("resolution", ["full", "half"])
def test_instance_optimisation_lowers_the_full_resolution_loss(resolution):
    from medpipe.registration import spatial
    from medpipe.registration.deep import refine_velocity

    a = torch.nn.functional.avg_pool3d(_blobs(shape=(32, 32, 32)), 5, stride=1, padding=2)  # smooth: a wide basin
    moved = torch.roll(a, 1, dims=3)  # the moving image: the fixed one shifted one voxel
    zero = torch.zeros(1, 3, *a.shape[2:])
    before = float(local_ncc(a, moved))
    vel = refine_velocity(zero, a, moved, 15, loss_resolution=resolution, smooth=0.1)
    warped = spatial.warp(moved, spatial.integrate_velocity(vel))
    assert float(local_ncc(a, warped)) < before - 0.05
    inner = (slice(None), slice(None), *[slice(6, -6)] * 3)  # away from the rolled-over border
    assert float(((warped - a)[inner] ** 2).mean()) < 0.7 * float(((moved - a)[inner] ** 2).mean())
    with pytest.raises(ValueError, match="loss_resolution must be"):
        refine_velocity(zero, a, moved, 1, loss_resolution="quarter")
