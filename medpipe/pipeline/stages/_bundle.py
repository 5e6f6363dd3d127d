"""Preprocessing settings read from a model bundle (explicit stage params override them).

"Inference reads preprocessing from the bundle, never from the user's memory": the
reorient/resample/normalize stages accept ``bundle: <folder>`` and take orientation,
spacing and normalisation from its ``model.yaml``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["bundle_preprocessing"]


def bundle_preprocessing(path: str) -> Any:
    """The bundle's ``Preprocessing`` record (BundleError with one sentence if unusable).

    The path is resolved like the segment stage resolves it (absolute, relative, or a
    bundle shipped with medpipe), so one ``bundle:`` value works for every stage.
    """
    from medpipe.errors import BundleError
    from medpipe.models.bundle import load_bundle, resolve_bundle_path

    cfg = load_bundle(resolve_bundle_path(path)).config
    if cfg.preprocessing is None:
        raise BundleError(f"bundle {cfg.name} is a {cfg.task} bundle and has no image preprocessing")
    return cfg.preprocessing
