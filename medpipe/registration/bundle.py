"""Registration bundles: a model bundle with ``task: registration`` and a ``registration`` block.

The block says how the network was trained to see a pair — the working grid (shape at the
bundle's spacing), the integration steps, whether it is same-modality, the default instance
optimisation — and, for atlas bundles, where the atlas image and its labels are inside the
bundle (``atlas/image.nii.gz``, ``atlas/labels.nii.gz`` and, for brain atlases, the lobar
territories ``atlas/regions.nii.gz``), so ``propagate_labels`` needs nothing but the bundle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medpipe.errors import BundleError
from medpipe.models.bundle import Bundle, load_bundle

__all__ = ["RegistrationSettings", "registration_settings", "load_registration_bundle", "save_registration_bundle",
           "ATLAS_IMAGE", "ATLAS_LABELS", "ATLAS_REGIONS"]

ATLAS_IMAGE = "atlas/image.nii.gz"
ATLAS_LABELS = "atlas/labels.nii.gz"
ATLAS_REGIONS = "atlas/regions.nii.gz"


class RegistrationSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grid: list[int] = Field(min_length=3, max_length=3)
    integration_steps: int = Field(7, ge=0)
    same_modality: bool = True
    refine_iterations: int = Field(0, ge=0)
    atlas_image: str | None = None
    atlas_labels: str | None = None
    atlas_regions: str | None = None  # a second label set on the atlas grid (brain: lobar territories)


def registration_settings(bundle: Bundle) -> RegistrationSettings:
    cfg = bundle.config
    if cfg.task != "registration" or cfg.registration is None:
        raise BundleError(f"bundle {cfg.name} is a {cfg.task} bundle, not a registration model")
    try:
        return RegistrationSettings.model_validate(cfg.registration)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise BundleError(f"bundle {bundle.path}: registration.{'.'.join(map(str, err['loc']))}: {err['msg']}") from exc


def load_registration_bundle(path: str | Path) -> tuple[Bundle, RegistrationSettings]:
    """A validated registration bundle (its atlas files exist when it names them)."""
    from medpipe.models.bundle import resolve_bundle_path

    bundle = load_bundle(resolve_bundle_path(str(path)))
    settings = registration_settings(bundle)
    for rel in (settings.atlas_image, settings.atlas_labels, settings.atlas_regions):
        if rel is not None and not (bundle.path / rel).is_file():
            raise BundleError(f"bundle {bundle.path} names its atlas file {rel} but it is missing")
    return bundle, settings


def save_registration_bundle(out: Path, model, cfg, grid: dict[str, Any], evaluation: dict[str, Any], work: Path, *,
                             atlas=None, overwrite: bool = False) -> Path:
    """Weights + model.yaml (+ atlas, log, curve) written atomically as one folder.

    ``atlas`` is ``(image, labels)`` or ``(image, labels, regions)``; labels and regions may be None."""
    from medpipe.models.bundle import save_bundle

    settings = RegistrationSettings(grid=list(grid["shape"]), refine_iterations=cfg.refine_iterations,
                                    atlas_image=ATLAS_IMAGE if atlas else None,
                                    atlas_labels=ATLAS_LABELS if atlas and atlas[1] is not None else None,
                                    atlas_regions=ATLAS_REGIONS if atlas and len(atlas) > 2 and atlas[2] is not None
                                    else None)
    config = {
        "name": cfg.name, "description": cfg.description, "architecture": cfg.model,
        "arch_config": {"in_channels": 2, "num_classes": 3, **cfg.arch}, "modality": cfg.modality,
        "channels": ["fixed", "moving"], "task": "registration",
        "preprocessing": {"orientation": "RAS", "spacing": [cfg.spacing] * 3,
                          "normalization": {"scheme": "none"}, "patch_size": list(grid["shape"])},
        "training": cfg.model_dump(mode="json"), "evaluation": evaluation,
        "registration": settings.model_dump(exclude_none=True),
    }
    extra: dict[str, Path] = {}
    for name in ("training_log.csv", "learning_curve.png"):
        if (work / name).is_file():
            extra[name] = work / name
    if atlas:
        image, labels, regions = (*atlas, None)[:3]
        image.save(work / "atlas_image.nii.gz")
        extra[ATLAS_IMAGE] = work / "atlas_image.nii.gz"
        if labels is not None:
            labels.save(work / "atlas_labels.nii.gz")
            extra[ATLAS_LABELS] = work / "atlas_labels.nii.gz"
        if regions is not None:
            regions.save(work / "atlas_regions.nii.gz")
            extra[ATLAS_REGIONS] = work / "atlas_regions.nii.gz"
    save_bundle(out, model, config, overwrite=overwrite, extra_files=extra)
    return out
