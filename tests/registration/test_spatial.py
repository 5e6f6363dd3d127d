"""Warping, scaling and squaring, composition, inversion and Jacobians on voxel grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medpipe.registration import spatial


def _smooth_field(shape, amp, seed=0):
    from medpipe.data.deformations import random_displacement

    return random_displacement(shape, np.random.default_rng(seed), amplitude=amp, affine_strength=0.0)


def test_constant_velocity_integrates_to_the_same_translation():
    v = torch.zeros(1, 3, 16, 16, 16)
    v[:, 0], v[:, 2] = 1.5, -0.75
    d = spatial.integrate_velocity(v, 7)
    inner = d[:, :, 3:-3, 3:-3, 3:-3]
    assert torch.allclose(inner[:, 0], torch.full_like(inner[:, 0], 1.5), atol=1e-4)
    assert torch.allclose(inner[:, 2], torch.full_like(inner[:, 2], -0.75), atol=1e-4)
    assert torch.equal(spatial.integrate_velocity(torch.zeros(1, 3, 8, 8, 8)), torch.zeros(1, 3, 8, 8, 8))


def test_warp_by_integer_shift_moves_voxels_exactly():
    img = torch.arange(8 * 9 * 10, dtype=torch.float32).reshape(1, 1, 8, 9, 10)
    d = torch.zeros(1, 3, 8, 9, 10)
    d[:, 1] = 2.0  # out(x) = img(x + 2 along J)
    out = spatial.warp(img, d)
    assert torch.allclose(out[0, 0, :, :-2], img[0, 0, :, 2:])


def test_scaling_and_squaring_is_invertible_and_diffeomorphic():
    v = _smooth_field((24, 24, 24), 1.5, seed=3)
    fwd, bwd = spatial.integrate_velocity(v), spatial.integrate_velocity(-v)
    resid = spatial.compose(fwd, bwd)[:, :, 4:-4, 4:-4, 4:-4]
    assert float(resid.abs().max()) < 0.05 * float(fwd.abs().max())
    assert float(spatial.jacobian_determinant(fwd).min()) > 0


def test_fixed_point_inverse_matches_negative_velocity():
    v = _smooth_field((24, 24, 24), 1.0, seed=4)
    d = spatial.integrate_velocity(v)
    inv = spatial.invert(d)
    ref = spatial.integrate_velocity(-v)
    assert float((inv - ref)[:, :, 4:-4, 4:-4, 4:-4].abs().max()) < 0.05
    assert float(spatial.compose(inv, d)[:, :, 4:-4, 4:-4, 4:-4].abs().max()) < 0.01  # what it solves
    assert float(spatial.compose(d, inv)[:, :, 4:-4, 4:-4, 4:-4].abs().max()) < 0.1  # the other side


def test_exp_field_at_half_resolution_agrees_with_full():
    v = _smooth_field((32, 32, 32), 1.0, seed=5)
    full, half = spatial.integrate_velocity(v), spatial.exp_field(v, downsize=2)
    err = (full - half)[:, :, 4:-4, 4:-4, 4:-4].norm(dim=1)
    assert float(err.mean()) < 0.05 * float(full.norm(dim=1).max()) and float(err.max()) < 0.25


def test_resize_field_rescales_vectors_and_jacobian_of_a_scaling():
    d = torch.zeros(1, 3, 9, 9, 9)
    d[:, 0] = 2.0
    r = spatial.resize_field(d, (17, 17, 17))
    assert torch.allclose(r[:, 0], torch.full_like(r[:, 0], 4.0)) and float(r[:, 1:].abs().max()) == 0
    grid = spatial.identity_grid((10, 10, 10))
    scale = grid * torch.tensor([0.1, 0.0, -0.2]).view(1, 3, 1, 1, 1)  # x -> (1.1 x, y, 0.8 z)
    assert torch.allclose(spatial.jacobian_determinant(scale), torch.full((1, 10, 10, 10), 1.1 * 0.8), atol=1e-5)


def test_warp_rejects_mismatched_grids():
    with pytest.raises(ValueError, match="differs from field grid"):
        spatial.warp(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 3, 5, 4, 4))
