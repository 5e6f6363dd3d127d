"""``register(fixed, moving, method=...)``: one entry point for every method.

``method`` is ``micdir`` / ``voxelmorph`` (a registration bundle; ``micdir`` defaults to the
shipped brain bundle), ``demons``, ``bspline`` (SimpleITK) or ``affine`` (the pre-alignment
alone). Every method starts with the same checks (3D, finite, same modality for
same-modality methods, overlapping fields of view after the affine) and the same SimpleITK
affine pre-alignment, and returns the total transform as a :class:`DisplacementField` on the
fixed image's own grid plus the moving image warped onto it.

Example:
    >>> result = register(fixed, moving, method="micdir")          # doctest: +SKIP
    >>> result.field.save("fixed_from_moving.nii.gz")                  # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from medpipe.errors import InputError
from medpipe.image import Image
from medpipe.registration.checks import check_overlap, check_same_modality, check_volume
from medpipe.registration.classic import affine_align, bspline, compose_affine, demons
from medpipe.registration.field import DisplacementField, warp_image

__all__ = ["Method", "METHODS", "DEFAULT_BUNDLE", "RegistrationResult", "register", "resample_to"]

Method = Literal["micdir", "voxelmorph", "demons", "bspline", "affine"]
METHODS = ("micdir", "voxelmorph", "demons", "bspline", "affine")
DEFAULT_BUNDLE = {"micdir": "brain_micdir"}
CLASSIC_SPACING = 2.0  # mm: demons / B-spline run on a grid this fine (the fixed image's when coarser)


@dataclass
class RegistrationResult:
    """The transform (fixed grid, world mm), the warped moving image, and what it cost."""

    field: DisplacementField
    warped: Image
    affine: np.ndarray
    method: str
    seconds: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def total_seconds(self) -> float:
        return float(sum(v for k, v in self.seconds.items() if k != "warp_s"))


def resample_to(image: Image, spacing: float) -> Image:
    """``image`` on a grid of ``spacing`` mm over the same extent and axes (no-op when already
    that coarse or coarser), history-free: registration's internal working copy."""
    if min(image.spacing) >= spacing - 1e-6:
        return image
    from medpipe.transforms import resample_to_spacing

    out, _ = resample_to_spacing(image, spacing, order=1)
    out.meta.extra.pop("geometry_history", None)
    return out


def _network(bundle_path: str, method: str, device: str):
    from medpipe.registration.bundle import load_registration_bundle

    bundle, settings = load_registration_bundle(bundle_path)
    if bundle.config.architecture != method:
        raise InputError(f"method {method!r} needs a {method} bundle, but {bundle.path} holds "
                         f"{bundle.config.architecture}")
    return bundle, settings, bundle.build_model(device)


_MODELS: dict[tuple[str, str], Any] = {}


def register(fixed: Image, moving: Image, method: str = "micdir", *, bundle: str | None = None,
             affine: bool = True, refine_iterations: int | None = None, demons_iterations: tuple[int, ...] | None = None,
             bspline_iterations: int | None = None, device: str = "cpu", output_grid: Image | None = None,
             check_modality: bool = True, min_overlap: float = 0.3, warp: bool = True, engine: str = "auto",
             precision: str = "fp32", refine_options: dict[str, Any] | None = None) -> RegistrationResult:
    """Register ``moving`` onto ``fixed``; see the module docstring. ``output_grid`` (default
    ``fixed``) is where the field and the warped image are returned. ``engine`` / ``precision``
    choose what runs a learned method's network (``auto``: OpenVINO on the CPU when installed;
    ``precision`` ``fp32`` or ``bf16``, OpenVINO's inference hint). ``refine_options`` go to
    :func:`medpipe.registration.deep.refine_velocity` (its ``REFINE_OPTIONS``)."""
    from medpipe.registration.deep import ENGINES, REFINE_OPTIONS

    if method not in METHODS:
        raise InputError(f"unknown registration method {method!r}; choose one of {', '.join(METHODS)}")
    if engine not in ENGINES:
        raise InputError(f"unknown registration engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if precision not in ("fp32", "bf16"):
        raise InputError(f"registration precision must be fp32 or bf16, not {precision!r}")
    unknown = set(refine_options or {}) - set(REFINE_OPTIONS)
    if unknown:
        raise InputError(f"unknown instance-optimisation option(s) {', '.join(sorted(unknown))}; "
                         f"choose from {', '.join(REFINE_OPTIONS)}")
    check_volume(fixed, "the fixed image")
    check_volume(moving, "the moving image")
    deep = method in ("micdir", "voxelmorph")
    secs: dict[str, float] = {}
    facts: dict[str, Any] = {"method": method}
    net = settings = None
    if deep:
        key = (bundle or DEFAULT_BUNDLE.get(method) or "", method, device)
        if not key[0]:
            raise InputError(f"method {method!r} needs a bundle (a registration bundle folder)")
        if key not in _MODELS:
            _MODELS[key] = _network(key[0], method, device)
        b, settings, net = _MODELS[key]
        facts["bundle"] = {"name": b.config.name, "version": b.config.version}
        if check_modality and settings.same_modality:
            check_same_modality(fixed, moving, f"bundle {b.config.name}")
            if b.config.modality and (fixed.meta.modality or b.config.modality).upper() != b.config.modality:
                raise InputError(f"bundle {b.config.name} registers {b.config.modality} images, the fixed image is "
                                 f"{fixed.meta.modality.upper()}")
    elif method == "demons" and check_modality:
        check_same_modality(fixed, moving, "demons (an intensity-difference method)")
    t0 = time.perf_counter()
    spacing = float(b.config.preprocessing.spacing[0]) if deep else CLASSIC_SPACING
    f_work, m_work = resample_to(fixed, spacing), resample_to(moving, spacing)
    secs["resample_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    matrix = affine_align(f_work, m_work) if affine else np.eye(4)
    secs["affine_s"] = time.perf_counter() - t0
    facts["overlap_after_affine"] = round(check_overlap(f_work, moving, matrix, min_overlap), 3)
    out_grid = output_grid if output_grid is not None else fixed
    t0 = time.perf_counter()
    if deep:
        from medpipe.registration.deep import predict_deformable

        steps = settings.refine_iterations if refine_iterations is None else refine_iterations
        deformable, timing = predict_deformable(net, f_work, m_work, matrix, spacing=spacing,
                                                shape=tuple(settings.grid), steps=settings.integration_steps,
                                                refine_iterations=steps, device=device, engine=engine,
                                                precision=precision, refine_options=refine_options)
        secs["deformable_s"] = time.perf_counter() - t0
        facts.update({k: round(v, 3) for k, v in timing.items()}, refine_iterations=steps,
                     working_grid=deformable.meta.get("working_grid"), engine=deformable.meta.get("engine"))
        t0 = time.perf_counter()
        total = compose_affine(deformable.on_grid(out_grid), matrix)
    elif method == "affine":
        total = DisplacementField.from_affine(out_grid, matrix)
    else:
        if method == "demons":
            work_field = demons(f_work, m_work, matrix, **({"iterations": demons_iterations} if demons_iterations else {}))
        else:
            work_field = bspline(f_work, m_work, matrix, **({"iterations": bspline_iterations} if bspline_iterations
                                                            else {}))
        secs["deformable_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        # back to the pure deformable part, resampled onto the output grid, then the affine again
        deformable = _deformable_part(work_field, matrix)
        total = compose_affine(deformable.on_grid(out_grid), matrix)
    secs["compose_s"] = time.perf_counter() - t0
    total.meta.update({"method": method, "affine": matrix.tolist()})
    t0 = time.perf_counter()
    warped = warp_image(moving, total) if warp else moving
    secs["warp_s"] = time.perf_counter() - t0
    return RegistrationResult(total, warped, matrix, method, {k: round(v, 3) for k, v in secs.items()}, facts)


def _deformable_part(total: DisplacementField, matrix: np.ndarray) -> DisplacementField:
    """``u`` such that ``total(x) = A (x + u(x))``: ``u = A⁻¹(x + total(x)) - x``."""
    inv = np.linalg.inv(matrix)
    moved = total.points()
    base = moved - np.moveaxis(total.array, 0, -1)
    pre = moved @ inv[:3, :3].T + inv[:3, 3]
    return DisplacementField(np.moveaxis(pre - base, -1, 0).astype(np.float32), total.affine.copy())
