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
    normalize_name,
    register_model,
)

__all__ = ["ModelInfo", "count_parameters", "create_model", "is_model", "list_models", "model_info",
           "normalize_name", "register_model"]

_FAMILY_MODULES = [
    "medpipe.models.stunet",
    "medpipe.models.revunet",
    "medpipe.models.umamba",
]

for _name in _FAMILY_MODULES:
    importlib.import_module(_name)
