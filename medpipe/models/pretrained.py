"""Pretrained weights from a file the user gives (nothing is downloaded).

ImageNet encoders and official checkpoints come as torch pickles (``.pth``/``.pt``, often
wrapped in ``{"state_dict": ...}`` or ``{"model": ...}``) or as safetensors. Pickles are
read with ``weights_only=True`` (no code runs). Loading is by name and shape: keys that
match the model are copied, the rest are reported, and a checkpoint that matches nothing
is refused with one sentence (the usual sign of a checkpoint for another network).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from medpipe.errors import InputError

__all__ = ["read_state_dict", "load_matching", "load_pretrained"]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` or torch checkpoint, DDP/compile prefixes removed."""
    from medpipe.models.bundle import clean_state_dict

    path = Path(path)
    if not path.is_file():
        raise InputError(f"pretrained weights {path} do not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and safetensors errors of every kind
        raise InputError(f"pretrained weights {path} could not be read: {str(exc).splitlines()[0][:200]}") from exc
    for key in ("state_dict", "model", "network_weights", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"pretrained weights {path} hold no state dict of tensors")
    return clean_state_dict(state)


def _adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor | None:
    """A pretrained RGB first conv for ``in_channels`` inputs: summed for grey (timm's rule),
    repeated and rescaled for more channels; ``None`` when it cannot be adapted."""
    if weight.ndim != 4 or weight.shape[1] != 3:
        return None
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_channels // 3)
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (3 / in_channels)


def load_matching(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> dict[str, int]:
    """Copy every tensor of ``state`` whose name and shape the model has (first convs with
    another channel count adapted); returns ``{"loaded": n, "skipped": m}``."""
    own = model.state_dict()
    take: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in own:
            continue
        if own[key].shape != value.shape:
            adapted = _adapt_input_conv(value, own[key].shape[1]) if value.ndim == 4 else None
            if adapted is None or adapted.shape != own[key].shape:
                continue
            value = adapted
        take[key] = value.to(own[key].dtype)
    if not take:
        raise InputError(f"pretrained weights {where} share no tensor (name and shape) with "
                         f"{type(model).__name__}; is it a checkpoint of another network?")
    model.load_state_dict(take, strict=False)
    return {"loaded": len(take), "skipped": len(state) - len(take)}


def load_pretrained(model: nn.Module, path: str | Path) -> dict[str, int]:
    """The model's own ``load_pretrained`` when it has one (name mapping), else by name."""
    custom = getattr(model, "load_pretrained", None)
    if callable(custom):
        return custom(path)
    return load_matching(model, read_state_dict(path), str(path))
