"""BART's ESPIRiT calibration follows the mask's fully sampled centre, so its image has the
reference's scale on every slice (ecalib's default 24 lines on an 8-line ACS scaled it 0.4x)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from medpipe.recon.masks import make_mask
from medpipe.recon.reconstruct import _acs_width, reconstruct


def test_acs_width_is_the_fully_sampled_centre() -> None:
    m = np.broadcast_to(make_mask("equispaced", (96, 96), 4.0, None, 0), (96, 96))
    assert _acs_width(m) == 8
    full = np.ones((40, 40), bool)
    assert _acs_width(full) == 40
    hole = full.copy()
    hole[20, 20] = False
    assert _acs_width(hole) == 0


@pytest.mark.skipif(shutil.which("bart") is None, reason="BART is not installed (apt-get install bart)")
def test_bart_keeps_the_reference_scale_on_a_small_acs(tmp_path: Path) -> None:
    from medpipe.data.mri_brain_studies import write_mri_brain_study
    from medpipe.io.kspace import read_kspace

    f = write_mri_brain_study(tmp_path, "s", seed=100, matrix=96, pixel_mm=2.0, slices=6, slice_mm=12.0)["file"]
    ks = read_kspace(f).undersample(make_mask("equispaced", (96, 96), 4.0, None, 0))
    img = reconstruct(ks, "bart").magnitude
    ratio = [np.percentile(ks.reference[k], 99) / np.percentile(img[k], 99) for k in range(1, 5)]
    assert np.allclose(ratio, 1.0, atol=0.15), ratio
