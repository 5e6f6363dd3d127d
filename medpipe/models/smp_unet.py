"""U-Net with a ResNet encoder from segmentation-models-pytorch: the 2D CNN baseline.

Why smp instead of our own: the encoder/decoder are the ones 2D users compare against
(``smp.Unet("resnet34")``), its parameter names (``encoder.*``, ``decoder.*``,
``segmentation_head.*``) are kept, so smp checkpoints load unchanged. It is built with
``encoder_weights=None`` (nothing is downloaded); ImageNet weights come from a file the
user gives (``load_pretrained``: torchvision/timm ResNet names are prefixed ``encoder.``).

smp is an optional dependency (``pip install 'medpipe[2d]'``), imported when a model of
this family is built, so ``import medpipe`` stays light.
"""

from __future__ import annotations

from pathlib import Path
from types import MethodType

from torch import nn

from medpipe.models.registry import register_model

__all__ = ["smp_unet_resnet34", "smp_unet_resnet18"]


def _load_pretrained(self: nn.Module, path: str | Path) -> dict[str, int]:
    from medpipe.models.pretrained import load_matching, read_state_dict

    state = read_state_dict(path)
    if not any(k.startswith(("encoder.", "decoder.")) for k in state):  # a bare ResNet checkpoint
        state = {f"encoder.{k}": v for k, v in state.items()}
    return load_matching(self, state, str(path))


def _create(encoder: str, in_channels: int = 3, num_classes: int = 2, **cfg) -> nn.Module:
    try:
        import segmentation_models_pytorch as smp
    except ImportError as exc:
        from medpipe.errors import InputError

        raise InputError("the smp_unet models need segmentation-models-pytorch: "
                         "pip install 'medpipe[2d]'") from exc
    model = smp.Unet(encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=num_classes, **cfg)
    model.spatial_dims = 2
    model.in_channels = in_channels
    model.num_classes = num_classes
    model.input_shape_must_be_divisible_by = [32, 32]  # five stride-2 stages
    model.load_pretrained = MethodType(_load_pretrained, model)
    return model


@register_model
def smp_unet_resnet34(**cfg) -> nn.Module:
    """smp U-Net, ResNet-34 encoder, decoder 256..16 (24.4 M params at 1 -> 9)."""
    return _create("resnet34", **cfg)


@register_model
def smp_unet_resnet18(**cfg) -> nn.Module:
    """smp U-Net, ResNet-18 encoder (14.3 M params at 1 -> 9)."""
    return _create("resnet18", **cfg)
