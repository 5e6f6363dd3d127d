"""medpipe.models: architecture families, the registry, and model bundles.

Family modules are imported through an explicit list (no discovery), so importing
``medpipe.models`` registers exactly these families and nothing else happens.
"""

from __future__ import annotations

import importlib

from medpipe.models.registry import (
    ModelInfo,
    count_parameters,
    create_model,
    is_model,
    list_models,
    model_info,
    model_task,
    normalize_name,
    register_model,
    with_task,
)

__all__ = ["ModelInfo", "count_parameters", "create_model", "is_model", "list_models", "model_info",
           "model_task", "normalize_name", "register_model", "with_task"]

_FAMILY_MODULES = [
    "medpipe.models.stunet",
    "medpipe.models.nnunet_unet",
    "medpipe.models.micdir",
    "medpipe.models.voxelmorph",
    "medpipe.models.rim",
    "medpipe.models.paratranscnn",
    "medpipe.models.transdae",
    "medpipe.models.smp_unet",
    "medpipe.models.revunet",
    "medpipe.models.umamba",
]

for _name in _FAMILY_MODULES:
    importlib.import_module(_name)
