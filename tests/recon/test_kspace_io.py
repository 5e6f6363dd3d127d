"""k-space files: medpipe round trip, fastMRI and ISMRMRD readers, one-sentence errors."""

from __future__ import annotations

import shutil
import subprocess

import h5py
import numpy as np
import pytest
from recon_helpers import small_kspace

from medpipe.errors import InputError
from medpipe.io.kspace import KSpace, axial_affine, read_kspace, write_kspace
from medpipe.recon.masks import make_mask

_XML = """<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding>
<encodedSpace><matrixSize><x>{ex}</x><y>{ey}</y><z>1</z></matrixSize>
<fieldOfView_mm><x>{fx}</x><y>{fy}</y><z>5</z></fieldOfView_mm></encodedSpace>
<reconSpace><matrixSize><x>{rx}</x><y>{ry}</y><z>1</z></matrixSize>
<fieldOfView_mm><x>{rfx}</x><y>{rfy}</y><z>5</z></fieldOfView_mm></reconSpace>
</encoding></ismrmrdHeader>"""


def test_medpipe_round_trip(tmp_path):
    ks = small_kspace(slices=2, coils=3, matrix=32)
    m = make_mask("random", ks.matrix, 4, seed=2)
    under = ks.undersample(m, {"mask_kind": "random"})
    assert under.is_undersampled and 3 < under.acceleration < 5
    assert np.allclose(under.reference, ks.reference)  # the fully sampled RSS stays the reference
    assert np.all(under.data[..., ~m[0]] == 0)
    path = write_kspace(under, tmp_path / "k.h5")
    back = read_kspace(path)
    assert back.data.shape == (3, 2, 32, 32) and np.array_equal(back.data, under.data)
    assert np.array_equal(back.mask, under.mask) and np.allclose(back.affine, under.affine)
    assert np.allclose(back.coil_maps, ks.coil_maps) and back.meta["mask_kind"] == "random"
    with pytest.raises(InputError, match="already undersampled"):
        under.undersample(m)


def test_fastmri_file_with_readout_oversampling(tmp_path):
    rng = np.random.default_rng(0)
    k = (rng.standard_normal((2, 4, 64, 24)) + 1j * rng.standard_normal((2, 4, 64, 24))).astype(np.complex64)
    p = tmp_path / "file_brain_AXT1_001.h5"
    with h5py.File(p, "w") as f:
        f["kspace"] = k
        f["reconstruction_rss"] = np.ones((2, 32, 24), np.float32)
        f["ismrmrd_header"] = _XML.format(ex=64, ey=24, fx=440, fy=220, rx=32, ry=24, rfx=220, rfy=220)
        f.attrs["acquisition"] = "AXT1"
        f.attrs["max"] = 1.0
    ks = read_kspace(p)
    assert ks.data.shape == (4, 2, 64, 24) and ks.image_shape == (32, 24)
    assert np.allclose(np.linalg.norm(ks.affine[:3, :3], axis=0), [220 / 24, 220 / 32, 5.0])
    assert not ks.is_undersampled and ks.meta["acquisition"] == "AXT1"
    assert any("no slice position" in w for w in ks.meta["warnings"])


@pytest.mark.skipif(shutil.which("ismrmrd_generate_cartesian_shepp_logan") is None,
                    reason="Debian ismrmrd-tools not installed")
def test_ismrmrd_file(tmp_path):
    pytest.importorskip("ismrmrd")
    out = tmp_path / "shepp.h5"
    subprocess.run(["ismrmrd_generate_cartesian_shepp_logan", "-o", str(out), "-m", "64", "-c", "4"],
                   check=True, capture_output=True, cwd=tmp_path)
    ks = read_kspace(out)
    assert ks.n_coils == 4 and ks.matrix == (128, 64) and ks.image_shape == (64, 64)  # 2x readout oversampling
    assert not ks.is_undersampled and ks.meta["format"] == "ismrmrd"
    assert np.isfinite(ks.affine).all()


def test_bad_files_give_one_sentence(tmp_path):
    not_h5 = tmp_path / "notes.h5"
    not_h5.write_text("hello")
    with pytest.raises(InputError, match="is not an HDF5 file"):
        read_kspace(not_h5)
    with pytest.raises(InputError, match="does not exist"):
        read_kspace(tmp_path / "missing.h5")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["image"] = np.zeros((4, 4))
    with pytest.raises(InputError, match="holds no k-space"):
        read_kspace(other)
    real = tmp_path / "real.h5"
    with h5py.File(real, "w") as f:
        f["kspace"] = np.zeros((1, 2, 8, 8), np.float32)
    with pytest.raises(InputError, match="real-valued"):
        read_kspace(real)
    nan = tmp_path / "nan.h5"
    k = np.ones((1, 2, 8, 8), np.complex64)
    k[0, 0, 3, 3] = np.nan
    with h5py.File(nan, "w") as f:
        f["kspace"] = k
    with pytest.raises(InputError, match="slice 0 of the k-space holds NaN"):
        read_kspace(nan)
    bad_mask = tmp_path / "mask.h5"
    with h5py.File(bad_mask, "w") as f:
        f["kspace"] = np.ones((1, 2, 8, 8), np.complex64)
        f["mask"] = np.ones(6, bool)
    with pytest.raises(InputError, match="the mask has 6 entries but the k-space has 8 columns"):
        read_kspace(bad_mask)
    with pytest.raises(InputError, match="does not match k-space"):
        KSpace(np.ones((2, 1, 8, 8), np.complex64), np.ones((1, 8, 5), bool), axial_affine(8, 8, 1))


def test_data_kspace_cli_writes_a_simulated_real_brain(tmp_path, capsys):
    from medpipe.cli import main
    from medpipe.recon.sources import source_path

    try:
        source_path("itk_complex")
    except InputError as exc:
        pytest.skip(str(exc))
    rc = main(["data", "kspace", str(tmp_path), "--source", "itk_complex", "--slices", "1", "--copies", "2",
               "--augment", "--matrix", "128", "--coils", "4", "--snr", "20,40"])
    assert rc == 0, capsys.readouterr().err
    ks = read_kspace(tmp_path / "itk_complex_0.h5")
    assert ks.data.shape == (4, 2, 128, 128) and not ks.is_undersampled
    assert ks.reference.shape == (2, 128, 128) and 20 <= min(ks.meta["snr"]) <= max(ks.meta["snr"]) <= 40
    assert not np.allclose(ks.reference[0], ks.reference[1])  # two different augmentations
    assert main(["data", "kspace", str(tmp_path), "--source", "itk_complex", "--slices", "1"]) == 2
    assert "already exists" in capsys.readouterr().err
