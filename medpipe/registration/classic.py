"""Classic registration with SimpleITK: affine pre-alignment (Mattes MI), fast symmetric
demons, B-spline FFD — the baselines a hospital runs today, as methods of one stage.

Every function takes medpipe ``Image``s (RAS) and returns RAS world quantities: a 4x4
matrix mapping fixed points to moving points, or a :class:`DisplacementField` on the fixed
grid. SimpleITK works in LPS; the flips happen here and nowhere else.

Reproducible: the metric's random sampling has a fixed seed (``SAMPLING_SEED``), and ITK runs
on one thread here — its multi-threaded metric and demons reductions come out a few float
epsilons apart from run to run, so the same pair gave a different field (and, after warping,
different label voxels) under each engine. The cost is the threads ITK no longer uses: the MRI
job's affine + demons take 9-11 s per study single-threaded (benchmarks/RESULTS.md mri_brain).
"""

from __future__ import annotations

import numpy as np

from medpipe.errors import MedpipeError
from medpipe.image import Image
from medpipe.registration.field import LPS, DisplacementField

__all__ = ["affine_align", "demons", "bspline", "sitk_field", "compose_affine", "RegistrationFailed"]

_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])
# SimpleITK's metric sampling seed: 0 is ``sitkWallClock`` (a new random draw on every call), which
# made the same pair register differently on every run; any other value is a fixed draw.
SAMPLING_SEED = 1301


def _single_threaded(fn):
    """Run ``fn`` with ITK's default thread count at 1 (restored after): bit-identical results."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import SimpleITK as sitk

        before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)

    return wrapper


class RegistrationFailed(MedpipeError):
    """A classic optimiser raised (no overlap, degenerate metric): reported as one sentence."""


def _sitk_float(img: Image):
    import SimpleITK as sitk

    return sitk.Cast(img.to_sitk(0), sitk.sitkFloat32)


def _matrix_from_sitk(tx) -> np.ndarray:
    """4x4 of an ITK affine (LPS): ``y = A (x - c) + t + c``, converted to RAS."""
    a = np.asarray(tx.GetMatrix(), dtype=np.float64).reshape(3, 3)
    c = np.asarray(tx.GetCenter(), dtype=np.float64)
    t = np.asarray(tx.GetTranslation(), dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = a
    m[:3, 3] = t + c - a @ c
    return _FLIP @ m @ _FLIP


@_single_threaded
def affine_align(fixed: Image, moving: Image, *, shrink: tuple[int, ...] = (4, 2), sampling: float = 0.05,
                 iterations: int = 100, seed: int = SAMPLING_SEED) -> np.ndarray:
    """Centre-of-mass initialisation, then a 12-parameter affine by Mattes mutual information
    (32 bins, random sampling, multi-resolution ``shrink``). Returns the RAS 4x4 matrix that
    maps a fixed world point to the matching moving point.

    Why 5 % of the voxels: on the registration benchmark's pairs (2 mm brains, one thread) 15 %
    took 1.08 s per pair and 5 % 0.65 s, with the affine-only Dice 0.691 / 0.786 (real /
    synthetic) against 0.692 / 0.787 and MICDIR's 0.709 / 0.816 against 0.710 / 0.814; a
    single 4x-shrunk level (0.29 s) lost 0.012-0.015 synthetic Dice (an ad-hoc sweep; the
    recorded figures are benchmarks/RESULTS.md's registration rows).
    """
    import SimpleITK as sitk

    f, m = _sitk_float(fixed), _sitk_float(moving)
    init = sitk.CenteredTransformInitializer(f, m, sitk.AffineTransform(3),
                                             sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(sampling, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=iterations,
                                                 relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel([max(s / 2.0, 0.0) for s in shrink])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(init, inPlace=True)
    try:
        reg.Execute(f, m)
    except RuntimeError as exc:
        raise RegistrationFailed(f"affine pre-alignment failed ({str(exc).strip().splitlines()[-1][:160]}); "
                                 "check that both images show the same anatomy") from exc
    return _matrix_from_sitk(init)


def sitk_field(vec, reference: Image) -> DisplacementField:
    """A SimpleITK displacement-field image (LPS vectors on ``reference``'s grid) as RAS."""
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(vec).astype(np.float32)  # (K, J, I, 3)
    arr = np.moveaxis(np.transpose(arr, (2, 1, 0, 3)), -1, 0)
    return DisplacementField(np.einsum("ab,b...->a...", LPS, arr), reference.affine.copy())


def _resampled_moving(fixed: Image, moving: Image, matrix: np.ndarray) -> Image:
    from medpipe.registration.field import warp_image

    return warp_image(moving, DisplacementField.from_affine(fixed, matrix), fill=0.0)


@_single_threaded
def demons(fixed: Image, moving: Image, matrix: np.ndarray, *, iterations: tuple[int, ...] = (60, 40, 20),
           shrink: tuple[int, ...] = (4, 2, 1), sigma: float = 1.5) -> DisplacementField:
    """SimpleITK fast symmetric forces demons after the affine ``matrix``, multi-resolution,
    the moving image histogram-matched to the fixed one (what demons needs: same intensities).
    Returns the total transform (affine then deformable) as a field on ``fixed``'s grid."""
    import SimpleITK as sitk

    f = _sitk_float(fixed)
    m = _sitk_float(_resampled_moving(fixed, moving, matrix))
    m = sitk.HistogramMatching(m, f, numberOfHistogramLevels=256, numberOfMatchPoints=15, thresholdAtMeanIntensity=True)
    field = None
    for it, s in zip(iterations, shrink, strict=True):
        fs, ms = (sitk.Shrink(f, [s] * 3), sitk.Shrink(m, [s] * 3)) if s > 1 else (f, m)
        if field is None:
            init = sitk.Image(fs.GetSize(), sitk.sitkVectorFloat64, 3)
            init.CopyInformation(fs)
        else:
            init = sitk.Resample(field, fs, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
        flt = sitk.FastSymmetricForcesDemonsRegistrationFilter()
        flt.SetNumberOfIterations(int(it))
        flt.SetStandardDeviations(sigma)
        flt.SmoothDisplacementFieldOn()
        flt.SmoothUpdateFieldOff()
        try:
            field = flt.Execute(fs, ms, init)
        except RuntimeError as exc:
            raise RegistrationFailed(f"demons failed ({str(exc).strip().splitlines()[-1][:160]})") from exc
    return compose_affine(sitk_field(field, fixed), matrix)


@_single_threaded
def bspline(fixed: Image, moving: Image, matrix: np.ndarray, *, mesh: int = 8, iterations: int = 40,
            shrink: tuple[int, ...] = (4, 2, 1), sampling: float = 0.05, seed: int = SAMPLING_SEED) -> DisplacementField:
    """A cubic B-spline free-form deformation (``mesh``³ control grid) by Mattes MI with
    L-BFGS-B after the affine ``matrix``; the total transform as a field on ``fixed``'s grid."""
    import SimpleITK as sitk

    f = _sitk_float(fixed)
    m = _sitk_float(_resampled_moving(fixed, moving, matrix))
    tx = sitk.BSplineTransformInitializer(f, [mesh] * 3, order=3)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(sampling, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=iterations,
                             maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=4 * iterations)
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel([s / 2.0 for s in shrink])
    reg.SetInitialTransform(tx, inPlace=True)
    try:
        reg.Execute(f, m)
    except RuntimeError as exc:
        raise RegistrationFailed(f"B-spline registration failed ({str(exc).strip().splitlines()[-1][:160]})") from exc
    conv = sitk.TransformToDisplacementFieldFilter()
    conv.SetReferenceImage(f)
    conv.SetOutputPixelType(sitk.sitkVectorFloat64)
    return compose_affine(sitk_field(conv.Execute(tx), fixed), matrix)


def compose_affine(deformable: DisplacementField, matrix: np.ndarray) -> DisplacementField:
    """Total field of "deformable on the fixed grid, then the affine into moving space":
    ``x -> A (x + u(x))``."""
    pts = deformable.points()
    total = pts @ matrix[:3, :3].T + matrix[:3, 3]
    base = pts - np.moveaxis(deformable.array, 0, -1)
    return DisplacementField(np.moveaxis(total - base, -1, 0).astype(np.float32), deformable.affine.copy(),
                             dict(deformable.meta))
