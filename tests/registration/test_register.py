"""register(): every method on one phantom pair, the checks that run before any work."""

from __future__ import annotations

import numpy as np
import pytest

from medpipe.errors import GeometryError, InputError
from medpipe.image import Image
from medpipe.metrics import dice
from medpipe.registration.classic import affine_align
from medpipe.registration.field import DisplacementField, warp_image
from medpipe.registration.register import register


def _tissue_dice(res, fixed_labels, moving_labels) -> float:
    warped = warp_image(moving_labels, res.field).array[0]
    return float(np.mean([dice(warped == c, fixed_labels.array[0] == c) for c in (1, 2, 3)]))


def test_affine_alignment_recovers_a_known_shift(brain_pair):
    fixed = brain_pair[0]
    shift = np.eye(4)
    shift[:3, 3] = [6.0, -4.0, 2.0]
    moving = Image(fixed.array.copy(), shift @ fixed.affine, fixed.meta.copy())  # same voxels, moved 6/-4/2 mm
    m = affine_align(fixed, moving)
    assert np.allclose(m[:3, 3], [6.0, -4.0, 2.0], atol=0.8) and np.allclose(m[:3, :3], np.eye(3), atol=0.03)


def test_classic_registration_is_the_same_on_every_run(brain_pair):
    # SimpleITK's sampling seed 0 is the wall clock and its threaded sums vary in the last bits:
    # the same pair must give the same bytes (what lets every engine publish identical results)
    import SimpleITK as sitk

    f, _, m, _ = brain_pair
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    try:
        a, b = affine_align(f, m), affine_align(f, m)
        d1 = register(f, m, "demons", demons_iterations=(10, 5, 2)).field.array
        d2 = register(f, m, "demons", demons_iterations=(10, 5, 2)).field.array
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)
    assert np.array_equal(a, b) and np.array_equal(d1, d2)
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == before


@pytest.mark.parametrize("method", ["demons", "bspline"])
def test_classic_methods_improve_on_affine(brain_pair, method):
    f, fl, m, ml = brain_pair
    base = _tissue_dice(register(f, m, "affine"), fl, ml)
    res = register(f, m, method, **({"demons_iterations": (20, 10, 5)} if method == "demons" else
                                    {"bspline_iterations": 10}))
    assert res.field.shape == f.shape and res.warped.same_grid(f)
    assert _tissue_dice(res, fl, ml) > base + 0.02
    assert float(res.field.jacobian_determinant().min()) > 0


def test_learned_method_with_a_bundle_and_instance_optimisation(brain_pair, tiny_bundle):
    f, fl, m, ml = brain_pair
    res = register(f, m, "micdir", bundle=str(tiny_bundle), refine_iterations=5)
    assert res.field.shape == f.shape and res.facts["refine_iterations"] == 5
    assert all(n % 32 == 0 for n in res.facts["working_grid"]["shape"])  # grown to hold the whole head
    assert {"affine_s", "deformable_s"} <= set(res.seconds) and res.total_seconds > 0
    assert np.isfinite(res.warped.array).all()
    with pytest.raises(InputError, match="needs a voxelmorph bundle"):
        register(f, m, "voxelmorph", bundle=str(tiny_bundle))


def test_openvino_and_torch_run_the_same_network(brain_pair, tiny_bundle):
    # the shipped MICDIR once had a submodule named ``graph`` (clashes with TorchScript's and fx's
    # own attribute) and torch.diagonal (no OpenVINO rule): this is the test that it exports
    pytest.importorskip("openvino")
    f, _, m, _ = brain_pair
    ref = register(f, m, "micdir", bundle=str(tiny_bundle), engine="torch", warp=False)
    ov = register(f, m, "micdir", bundle=str(tiny_bundle), engine="openvino", warp=False)
    assert ref.facts["engine"] == "torch" and ov.facts["engine"] == "openvino-fp32"
    assert np.abs(ov.field.array - ref.field.array).max() < 1e-3  # mm
    bf16 = register(f, m, "micdir", bundle=str(tiny_bundle), engine="openvino", precision="bf16", warp=False)
    assert bf16.facts["engine"] == "openvino-bf16"
    with pytest.raises(InputError, match="unknown registration engine 'gpu'"):
        register(f, m, "micdir", bundle=str(tiny_bundle), engine="gpu")
    with pytest.raises(InputError, match="precision must be fp32 or bf16"):
        register(f, m, "micdir", bundle=str(tiny_bundle), precision="int8")
    with pytest.raises(InputError, match="unknown instance-optimisation option.* steps"):
        register(f, m, "micdir", bundle=str(tiny_bundle), refine_iterations=2, refine_options={"steps": 3})


def test_bad_inputs_are_refused_with_one_sentence(brain_pair, tiny_bundle):
    f, _, m, _ = brain_pair
    flat = Image(np.ones((1, 40, 48, 1), np.float32), f.affine)
    with pytest.raises(InputError, match="the moving image is a 2D image"):
        register(f, flat, "affine")
    nan = f.with_array(np.where(f.array > 500, np.nan, f.array).astype(np.float32))
    with pytest.raises(InputError, match=r"the fixed image holds \d+ NaN"):
        register(nan, m, "demons")
    ct = m.with_array(m.array)
    ct.meta.modality = "CT"
    with pytest.raises(InputError, match="fixed image is MR and the moving image is CT"):
        register(f, ct, "micdir", bundle=str(tiny_bundle))
    far = Image(m.array.copy(), m.affine.copy(), m.meta.copy())
    far.affine[:3, 3] += [500.0, 0.0, 0.0]  # another field of view entirely
    with pytest.raises(GeometryError, match="do not show the same anatomy"):
        register(f, far, "demons", affine=False)
    with pytest.raises(InputError, match="unknown registration method"):
        register(f, m, "syn")
    assert DisplacementField.identity(f).shape == f.shape
