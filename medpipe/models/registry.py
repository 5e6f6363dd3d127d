"""Model registry: name → factory, timm style.

A factory decorated with ``@register_model`` is registered under its own function name
(``stunet_s``); ``create_model`` only looks up and calls. User input may spell names with
dashes and any case (``STUNet-S``): ``normalize_name`` lower-cases and maps '-' → '_'.

Example:
    >>> from medpipe.models import create_model, list_models
    >>> list_models("stunet*")[:2]
    ['stunet_b', 'stunet_h']
    >>> net = create_model("stunet-xs", in_channels=1, num_classes=3)
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["register_model", "create_model", "accepts", "list_models", "model_info", "normalize_name",
           "is_model", "ModelInfo", "count_parameters", "model_task", "with_task"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_FAMILY: dict[str, str] = {}
_TASK: dict[str, str] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its ``__name__``; the family is its module's last name part."""
    name = fn.__name__
    if name in _MODELS and _MODELS[name] is not fn:
        raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = fn
    _FAMILY[name] = fn.__module__.rsplit(".", 1)[-1]
    _TASK[name] = getattr(fn, "task", "segmentation")
    return fn


def with_task(task: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Mark a factory's task (put it under ``@register_model``): ``registration`` (fixed +
    moving in, a velocity field out) or ``recon`` (k-space in, complex image out)."""
    def mark(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        fn.task = task  # type: ignore[attr-defined]
        return fn
    return mark


def model_task(name: str) -> str:
    """``segmentation`` (image in, class logits out) or what a factory declares
    (``registration``, ``recon``), so tools build each model with the inputs it takes."""
    return _TASK[normalize_name(name)]


def normalize_name(name: str) -> str:
    """``STUNet-S`` → ``stunet_s``: the spelling users type maps to the registered name."""
    return name.strip().lower().replace("-", "_")


def is_model(name: str) -> bool:
    """True when ``name`` (any accepted spelling) is registered."""
    return normalize_name(name) in _MODELS


def list_models(pattern: str = "*") -> list[str]:
    """Sorted registered names matching a shell-style ``pattern`` (``"stunet*"``)."""
    pattern = normalize_name(pattern)
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))


def create_model(name: str, **cfg) -> nn.Module:
    """Build model ``name`` with ``cfg`` (in_channels, num_classes, pools/kernels …)."""
    key = normalize_name(name)
    if key not in _MODELS:
        from medpipe.errors import InputError

        raise InputError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _MODELS[key](**cfg)


def accepts(name: str, argument: str) -> bool:
    """True when model ``name``'s factory declares ``argument`` (e.g. ``patch_size``) explicitly."""
    import inspect

    fn = _MODELS.get(normalize_name(name))
    return fn is not None and argument in inspect.signature(fn).parameters


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (works on ``meta`` tensors, so nothing is allocated)."""
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class ModelInfo:
    """What ``medpipe models`` shows for one registered model."""

    name: str
    family: str
    dims: int
    params: int

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "family": self.family, "dims": self.dims, "params": self.params}


def model_info(name: str, in_channels: int = 1, num_classes: int = 2, **cfg) -> ModelInfo:
    """Family, spatial dims and parameter count, built on the ``meta`` device (no memory)."""
    key = normalize_name(name)
    io = {"in_channels": in_channels, "num_classes": num_classes} if _TASK.get(key) != "recon" else {}
    with torch.device("meta"):
        model = create_model(key, **io, **cfg)
    dims = int(getattr(model, "spatial_dims", 3))
    return ModelInfo(name=key, family=_FAMILY[key], dims=dims, params=count_parameters(model))
