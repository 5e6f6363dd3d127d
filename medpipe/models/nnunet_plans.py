"""Read nnU-Net v2 ``plans.json`` / ``dataset.json`` into the facts a bundle needs.

nnU-Net has written two plans formats: since 2.4 a configuration holds its network as
``architecture = {network_class_name, arch_kwargs, _kw_requires_import}``; before, it held
``UNet_class_name``, ``UNet_base_num_features``, ``unet_max_num_features``,
``n_conv_per_stage_encoder/decoder``, ``pool_op_kernel_sizes`` and ``conv_kernel_sizes``.
nnU-Net's own plans handler converts the old form on the fly (conv bias on, InstanceNorm
eps 1e-5 affine, LeakyReLU); ``configuration_architecture`` does the same, so both load.
Configurations may ``inherits_from`` another (``3d_cascade_fullres`` from ``3d_fullres``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medpipe.errors import BundleError

__all__ = ["read_json", "configuration", "configuration_architecture", "arch_config_from_kwargs",
           "dataset_labels", "channel_names", "NIBABEL_READERS"]

NIBABEL_READERS = {"NibabelIO", "NibabelIOWithReorient"}
_ARCHITECTURES = {"PlainConvUNet": "nnunet_plain_unet", "ResidualEncoderUNet": "nnunet_resenc_unet"}


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BundleError(f"nnU-Net results folder {path.parent} has no {path.name}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BundleError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def configuration(plans: dict[str, Any], name: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """Configuration ``name`` with ``inherits_from`` resolved (the child's keys win)."""
    configs = plans.get("configurations") or {}
    if name not in configs:
        raise BundleError(f"plans.json has no configuration {name!r} (it has {', '.join(configs) or 'none'})")
    if name in _seen:
        raise BundleError(f"plans.json configurations inherit from each other in a loop: {' -> '.join(_seen + (name,))}")
    cfg = dict(configs[name])
    parent = cfg.pop("inherits_from", None)
    if parent:
        cfg = configuration(plans, parent, _seen + (name,)) | cfg
    return cfg


def configuration_architecture(cfg: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(network class name, arch_kwargs)`` of a configuration, in the current format."""
    arch = cfg.get("architecture")
    if isinstance(arch, dict):
        name = str(arch.get("network_class_name", ""))
        kwargs = arch.get("arch_kwargs")
        if not name or not isinstance(kwargs, dict):
            raise BundleError("plans.json architecture needs 'network_class_name' and 'arch_kwargs'")
        return name, dict(kwargs)
    if "UNet_class_name" not in cfg:
        raise BundleError("plans.json configuration has neither 'architecture' (nnU-Net >= 2.4) nor "
                          "'UNet_class_name' (older plans); it was not written by nnU-Net v2")
    try:
        n_stages = len(cfg["n_conv_per_stage_encoder"])
        base, cap = int(cfg["UNet_base_num_features"]), int(cfg["unet_max_num_features"])
        blocks_key = "n_conv_per_stage" if cfg["UNet_class_name"] == "PlainConvUNet" else "n_blocks_per_stage"
        kwargs = {
            "n_stages": n_stages,
            "features_per_stage": [min(base * 2**i, cap) for i in range(n_stages)],
            "conv_op": f"torch.nn.modules.conv.Conv{len(cfg['patch_size'])}d",
            "kernel_sizes": cfg["conv_kernel_sizes"],
            "strides": cfg["pool_op_kernel_sizes"],
            blocks_key: cfg["n_conv_per_stage_encoder"],
            "n_conv_per_stage_decoder": cfg["n_conv_per_stage_decoder"],
            "conv_bias": True,
            "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{len(cfg['patch_size'])}d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        }
    except (KeyError, TypeError) as exc:
        raise BundleError(f"old-format plans.json configuration lacks {exc}") from exc
    return str(cfg["UNet_class_name"]), kwargs


def _short(dotted: str | None) -> str:
    return (dotted or "").rsplit(".", 1)[-1]


def arch_config_from_kwargs(class_name: str, kwargs: dict[str, Any], *, in_channels: int, num_classes: int,
                            batch_norm: bool = False) -> tuple[str, dict[str, Any]]:
    """Our registered architecture and its config for nnU-Net's ``arch_kwargs``.

    ``batch_norm``: the checkpoint holds BatchNorm running statistics (trainers such as
    ``nnUNetTrainerBN`` replace the planned norm when they build the network)."""
    short = _short(class_name)
    if short not in _ARCHITECTURES:
        raise BundleError(f"nnU-Net network class {class_name} is not supported; medpipe imports "
                          f"{', '.join(_ARCHITECTURES)} and STU-Net trainers")
    unsupported = [k for k in ("squeeze_excitation", "stochastic_depth_p") if kwargs.get(k)]
    block = _short(kwargs.get("block"))
    if block and block != "BasicBlockD":
        unsupported.append(f"block={block}")
    if unsupported:
        raise BundleError(f"nnU-Net {short} with {', '.join(unsupported)} is not supported by the importer")
    norm = _short(kwargs.get("norm_op"))
    nonlin = _short(kwargs.get("nonlin"))
    nonlin_names = {"LeakyReLU": "leaky_relu", "ReLU": "relu", "GELU": "gelu", "PReLU": "prelu", "ELU": "elu", "": None}
    if nonlin not in nonlin_names:
        raise BundleError(f"nnU-Net nonlinearity {kwargs.get('nonlin')} is not supported")
    norm_kwargs = kwargs.get("norm_op_kwargs") or {}
    nonlin_kwargs = kwargs.get("nonlin_kwargs") or {}
    dropout_kwargs = kwargs.get("dropout_op_kwargs") or {}
    try:
        out: dict[str, Any] = {
            "in_channels": in_channels, "num_classes": num_classes,
            "n_stages": int(kwargs["n_stages"]),
            "features_per_stage": [int(f) for f in kwargs["features_per_stage"]],
            "kernel_sizes": [[int(v) for v in k] for k in kwargs["kernel_sizes"]],
            "strides": [[int(v) for v in s] for s in kwargs["strides"]],
            "n_conv_per_stage_decoder": [int(n) for n in kwargs["n_conv_per_stage_decoder"]],
            "conv_bias": bool(kwargs.get("conv_bias", False)),
            "norm": "batch" if batch_norm or "BatchNorm" in norm else ("instance" if "InstanceNorm" in norm else None),
            "norm_eps": float(norm_kwargs.get("eps", 1e-5)),
            "norm_affine": bool(norm_kwargs.get("affine", True)),
            "dropout_p": float(dropout_kwargs.get("p", 0.0)) if kwargs.get("dropout_op") else 0.0,
            "nonlin": nonlin_names[nonlin],
            "negative_slope": float(nonlin_kwargs.get("negative_slope", 1e-2)),
        }
        if short == "PlainConvUNet":
            out["n_conv_per_stage"] = [int(n) for n in kwargs["n_conv_per_stage"]]
            out["nonlin_first"] = bool(kwargs.get("nonlin_first", False))
        else:
            out["n_blocks_per_stage"] = [int(n) for n in kwargs["n_blocks_per_stage"]]
            if kwargs.get("stem_channels"):
                out["stem_channels"] = int(kwargs["stem_channels"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"plans.json arch_kwargs for {short} are incomplete or malformed ({exc})") from exc
    if norm and out["norm"] is None:
        raise BundleError(f"nnU-Net norm {kwargs.get('norm_op')} is not supported (instance or batch norm)")
    return _ARCHITECTURES[short], out


def dataset_labels(dataset: dict[str, Any]) -> tuple[dict[int, str], list[list[int]] | None, list[int] | None]:
    """``({output channel: name}, regions, regions_class_order)`` from ``dataset.json``.

    Plain labels map name → integer. Region-based datasets (BraTS) map a region name to a
    list of labels; each network output is then one region (sigmoid), and
    ``regions_class_order`` says which label each region paints, in order."""
    raw = dataset.get("labels") or {}
    if not raw:
        raise BundleError("dataset.json has no 'labels'")
    if all(str(k).isdigit() for k in raw):  # nnU-Net v1 style {"0": "background"}
        return {int(k): str(v) for k, v in raw.items()}, None, None
    regions = {name: v for name, v in raw.items() if isinstance(v, (list, tuple)) and len(v) > 1}
    if not regions:
        pairs: dict[int, str] = {}
        for name, v in raw.items():
            value = v[0] if isinstance(v, (list, tuple)) else v
            if name == "ignore":
                continue  # nnU-Net's ignore label is not a network output
            pairs[int(value)] = str(name)
        return pairs, None, None
    order = dataset.get("regions_class_order")
    if not order:
        raise BundleError("dataset.json uses region-based labels but has no 'regions_class_order'")
    names = [n for n in raw if n not in ("background", "ignore")]
    region_lists = [[int(x) for x in (raw[n] if isinstance(raw[n], (list, tuple)) else [raw[n]])] for n in names]
    if len(order) != len(names):
        raise BundleError(f"dataset.json has {len(names)} regions but {len(order)} entries in regions_class_order")
    return {i: n for i, n in enumerate(names)}, region_lists, [int(o) for o in order]


def channel_names(dataset: dict[str, Any]) -> list[str]:
    raw = dataset.get("channel_names") or dataset.get("modality") or {"0": "image"}
    return [str(v) for _, v in sorted(raw.items(), key=lambda kv: int(kv[0]))]
