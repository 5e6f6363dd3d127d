"""MRI physics properties: centred FFT round trip, SENSE adjointness, hybrid-space gradient,
mask accelerations and centres, coil-map estimates against the true sensitivities."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from recon_helpers import small_kspace

from medpipe.errors import InputError
from medpipe.recon import SenseOp, fft2c, ifft2c, make_mask, mask_acceleration, rss, sense_combine
from medpipe.recon.coilmaps import acs_maps, espirit_maps
from medpipe.recon.masks import acs_region, center_fraction_for
from medpipe.recon.simulate import simulate_slice


def _coherence(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = np.abs((a * np.conj(b)).sum(0))
    return num / (np.sqrt((np.abs(a) ** 2).sum(0) * (np.abs(b) ** 2).sum(0)) + 1e-12)


def test_centred_fft_round_trip_unitary_and_dc_at_centre():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 32, 48)) + 1j * rng.standard_normal((3, 32, 48))).astype(np.complex64)
    k = fft2c(x)
    assert np.allclose(ifft2c(k), x, atol=1e-5)
    assert np.isclose(np.linalg.norm(k), np.linalg.norm(x), rtol=1e-5)  # ortho: energy preserved
    ones = np.ones((16, 16))
    assert np.argmax(np.abs(fft2c(ones))) == 8 * 16 + 8  # DC at N // 2
    t = torch.from_numpy(x)
    assert torch.allclose(fft2c(t), torch.from_numpy(k), atol=1e-4)


@pytest.mark.parametrize("kind", ["equispaced", "random", "gaussian2d", "poisson"])
def test_sense_adjointness_and_hybrid_gradient(kind):
    rng = np.random.default_rng(1)
    maps = torch.from_numpy((rng.standard_normal((2, 4, 32, 40)) + 1j * rng.standard_normal((2, 4, 32, 40)))
                            .astype(np.complex64))
    mask = torch.from_numpy(make_mask(kind, (32, 40), 4, seed=3))
    op = SenseOp(maps, mask[None, None])
    assert op.hybrid == (kind in ("equispaced", "random"))
    x = torch.randn(2, 32, 40, dtype=torch.complex64)
    y = torch.randn(2, 4, 32, 40, dtype=torch.complex64)
    lhs = torch.vdot(op.forward(x).flatten(), y.flatten())
    rhs = torch.vdot(x.flatten(), op.adjoint(y).flatten())
    assert abs(lhs - rhs) / abs(lhs) < 1e-5
    measured = op.forward(torch.randn(2, 32, 40, dtype=torch.complex64))
    direct = op.adjoint(op.forward(x) - measured)
    assert torch.allclose(op.gradient(x, op.to_data_domain(measured)), direct, atol=1e-4 * direct.abs().max())
    assert torch.allclose(op.zero_filled(op.to_data_domain(measured)), op.adjoint(measured), atol=1e-5)


@pytest.mark.parametrize("kind,acc", [("equispaced", 4), ("equispaced", 8), ("random", 4), ("random", 8)])
def test_1d_masks_fastmri_centre_and_acceleration(kind, acc):
    cols = 368
    cf = center_fraction_for(acc)
    assert cf == {4: 0.08, 8: 0.04}[acc]
    accs = []
    for seed in range(20):
        m = make_mask(kind, (640, cols), acc, seed=seed)
        assert m.shape == (1, cols) and m.dtype == bool
        n_low = round(cols * cf)
        pad = (cols - n_low + 1) // 2
        assert m[0, pad:pad + n_low].all()
        accs.append(mask_acceleration(m))
    assert abs(np.mean(accs) - acc) / acc < 0.08
    assert np.array_equal(make_mask(kind, (640, cols), acc, seed=5), make_mask(kind, (640, cols), acc, seed=5))


def test_2d_masks():
    g = make_mask("gaussian2d", (64, 80), 6, seed=2)
    assert g.shape == (64, 80) and g.sum() == round(64 * 80 / 6)
    p = make_mask("poisson", (64, 80), 5, seed=2)
    assert p.shape == (64, 80) and 3.5 < mask_acceleration(p) < 7
    rows, cols = acs_region(g, g.shape)
    assert g[rows, cols].all() and rows.stop - rows.start >= 2
    with pytest.raises(InputError, match="unknown mask kind 'spiral'"):
        make_mask("spiral", (32, 32), 4)
    with pytest.raises(InputError, match="centre fraction of 0.5 already samples more than 1/4"):
        make_mask("random", (32, 32), 4, center_fraction=0.5)


@pytest.mark.parametrize("acc,matrix", [(4, 96), (8, 192)])
def test_coil_maps_match_true_sensitivities(acc, matrix):
    ks = small_kspace(slices=1, coils=6, matrix=matrix, snr=80)
    y0, true = ks.data[:, 0], ks.coil_maps[:, 0]
    mask = make_mask("equispaced", y0.shape[1:], acc, seed=1)
    y = y0 * mask
    obj = ks.reference[0] > 0.2 * ks.reference[0].max()
    assert _coherence(acs_maps(y, mask), true)[obj].mean() > 0.99
    esp = espirit_maps(y, mask)
    assert _coherence(esp, true)[obj].mean() > 0.99
    # fully sampled data: the SENSE combination with ESPIRiT maps has the RSS magnitude inside the head
    comb = np.abs(sense_combine(ifft2c(y0), esp, 0))
    ratio = comb[obj] / rss(ifft2c(y0), 0)[obj]
    assert np.mean(np.abs(ratio - 1) < 0.05) > 0.97


def test_espirit_agrees_with_sigpy_where_a_square_region_fits():
    import sigpy.mri as mr

    ks = small_kspace(slices=1, coils=4, matrix=64, snr=100)
    y = ks.data[:, 0]
    ours = espirit_maps(y, np.ones((1, 64), bool), max_rows=24)
    ref = mr.app.EspiritCalib(y, calib_width=24, show_pbar=False).run()
    obj = ks.reference[0] > 0.2 * ks.reference[0].max()
    assert _coherence(ours, ref)[obj].mean() > 0.995


def test_too_few_acs_lines_is_one_sentence():
    y = small_kspace(slices=1, matrix=64).data[:, 0]
    mask = np.zeros((1, 64), bool)
    mask[0, ::4] = True
    with pytest.raises(InputError, match="fully sampled centre of only"):
        acs_maps(y * mask, mask)


def test_simulation_noise_level_and_reference():
    mag = np.zeros((64, 64), np.float32)
    mag[16:48, 16:48] = 1.0
    sim = simulate_slice(mag, coils=4, snr=20.0, rng=np.random.default_rng(0))
    assert sim.kspace.shape == (4, 64, 64) and sim.kspace.dtype == np.complex64
    assert np.isclose(sim.sigma, 1.0 / 20.0)
    outside = ifft2c(sim.kspace)[:, :8, :8]
    assert abs(np.std(outside) - sim.sigma) / sim.sigma < 0.2
    assert np.allclose(sim.reference, rss(ifft2c(sim.kspace), 0))
