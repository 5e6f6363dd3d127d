"""Turn a trained nnU-Net v2 results folder (STU-Net trainer) into a medpipe bundle.

nnU-Net keeps a model's meaning in three places — ``plans.json`` (patch size, spacing,
normalisation, pools), ``dataset.json`` (labels, channels) and
``fold_X/checkpoint_final.pth`` (``network_weights``) — and in an implicit axis order:
with ``SimpleITKIO`` its arrays are the image's voxel axes reversed (z, y, x), then
permuted by ``transpose_forward``. Our bundles use the image's voxel axes (i, j, k)
after reorientation. Rather than carry a permutation into inference, we permute the
*weights* (3×3×3 kernels, per-axis pools) once here: the imported network computes on
an (i, j, k) array exactly what the nnU-Net network computed on its (z, y, x) array.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from medpipe.errors import BundleError
from medpipe.models.bundle import Bundle, BundleConfig, clean_state_dict, save_bundle

__all__ = ["import_nnunet", "stunet_arch_from_weights"]

_NIBABEL_READERS = {"NibabelIO", "NibabelIOWithReorient"}
_PALETTE = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
            (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
            (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0)]


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BundleError(f"nnU-Net results folder {path.parent} has no {path.name}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from exc


def _load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BundleError(f"nnU-Net results folder has no {path.parent.name}/{path.name}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # nnU-Net also pickles numpy logs; only a full unpickle reads those
        warnings.warn(f"{path} holds more than tensors; loading it with full unpickling (only import "
                      "checkpoints you trust)", stacklevel=3)
        return torch.load(path, map_location="cpu", weights_only=False)


def stunet_arch_from_weights(state: dict[str, torch.Tensor]) -> tuple[str, dict[str, Any]]:
    """Registered STU-Net size and (in_channels, num_classes, conv kernels) read off the tensors."""
    from medpipe.models.stunet import _SIZES

    if "conv_blocks_context.0.0.conv1.weight" not in state or "seg_outputs.0.weight" not in state:
        raise BundleError("checkpoint is not an STU-Net (no 'conv_blocks_context.0.0.conv1.weight'); "
                          "medpipe imports STU-Net trainers only")
    n_stages = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("conv_blocks_context."))
    widths = tuple(int(state[f"conv_blocks_context.{d}.0.conv1.weight"].shape[0]) for d in range(n_stages))
    depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("conv_blocks_context.0."))
    for size, (w, blocks) in _SIZES.items():
        if w == widths and blocks == depth:
            first = state["conv_blocks_context.0.0.conv1.weight"]
            kernels = [list(state[f"conv_blocks_context.{d}.0.conv1.weight"].shape[2:]) for d in range(n_stages)]
            return f"stunet_{size}", {"in_channels": int(first.shape[1]),
                                      "num_classes": int(state["seg_outputs.0.weight"].shape[0]),
                                      "conv_kernel_sizes": kernels}
    raise BundleError(f"checkpoint is an STU-Net with widths {list(widths)} and {depth} block(s) per stage, "
                      "which matches no registered size (xs/s/b/l/h)")


def _configuration(plans: dict[str, Any], name: str) -> dict[str, Any]:
    configs = plans.get("configurations", {})
    if name not in configs:
        raise BundleError(f"plans.json has no configuration {name!r} (has {', '.join(configs)})")
    cfg = dict(configs[name])
    if "inherits_from" in cfg:
        cfg = _configuration(plans, cfg.pop("inherits_from")) | cfg
    return cfg


def _stunet_pools(plan_pools: list[list[int]], n_pools: int, ndim: int) -> list[list[int]]:
    """STU-Net's rule: drop nnU-Net v2's leading all-ones stage-0 entry, keep at most
    ``n_pools`` downsamplings and pad with ones (as ``STUNetTrainer.process_plans``)."""
    pools = [list(p) for p in plan_pools]
    if pools and all(v == 1 for v in pools[0]):
        pools = pools[1:]
    pools = pools[:n_pools]
    return pools + [[1] * ndim] * (n_pools - len(pools))


def _normalization(cfg: dict[str, Any], plans: dict[str, Any], n_channels: int) -> dict[str, Any]:
    schemes = cfg.get("normalization_schemes", ["ZScoreNormalization"] * n_channels)
    if len(set(schemes)) != 1 or (schemes[0] == "CTNormalization" and n_channels > 1):
        raise BundleError(f"nnU-Net normalization {schemes} cannot be expressed in a bundle "
                          "(one scheme for all channels, CT statistics for one channel)")
    scheme = schemes[0]
    if scheme == "CTNormalization":
        props = plans.get("foreground_intensity_properties_per_channel", {}).get("0")
        if not props:
            raise BundleError("plans.json uses CTNormalization but has no "
                              "foreground_intensity_properties_per_channel['0']")
        return {"scheme": "ct", "clip": [props["percentile_00_5"], props["percentile_99_5"]],
                "mean": props["mean"], "std": props["std"]}
    if scheme == "ZScoreNormalization":
        return {"scheme": "zscore"}
    if scheme == "NoNormalization":
        return {"scheme": "none"}
    raise BundleError(f"nnU-Net normalization {scheme!r} is not supported (ct, zscore, none)")


def _labels(dataset: dict[str, Any], num_classes: int) -> dict[int, dict[str, Any]]:
    raw = dataset.get("labels", {})
    if raw and all(str(k).isdigit() for k in raw):  # nnU-Net v1 style {"0": "background"}
        pairs = {int(k): str(v) for k, v in raw.items()}
    else:
        if any(not isinstance(v, int) for v in raw.values()):
            raise BundleError("dataset.json uses region-based labels, which medpipe bundles do not support")
        pairs = {int(v): str(k) for k, v in raw.items()}
    if sorted(pairs) != list(range(num_classes)):
        raise BundleError(f"dataset.json labels {sorted(pairs)} do not match the network's {num_classes} outputs")
    return {i: {"name": n, "color": list(_PALETTE[i % len(_PALETTE)])} for i, n in pairs.items()}


def _permute_spatial(state: dict[str, torch.Tensor], inv: list[int]) -> dict[str, torch.Tensor]:
    order = [0, 1] + [2 + a for a in inv]
    return {k: (v.permute(*order).contiguous() if v.ndim == 2 + len(inv) else v) for k, v in state.items()}


def import_nnunet(results_folder: str | Path, out_bundle: str | Path, fold: str | int = "all", *,
                  name: str | None = None, version: str = "1.0", modality: str | None = None,
                  orientation: str = "RAS", configuration: str | None = None,
                  overwrite: bool = False) -> Bundle:
    """Convert ``results_folder`` (``plans.json``, ``dataset.json``, ``fold_<fold>/checkpoint_final.pth``)
    into a bundle at ``out_bundle``. ``orientation`` is the voxel orientation the training
    images were stored in (nnU-Net does not reorient)."""
    from medpipe.models import create_model

    root = Path(results_folder)
    if not root.is_dir():
        raise BundleError(f"nnU-Net results folder {root} does not exist")
    plans = _read_json(root / "plans.json")
    dataset = _read_json(root / "dataset.json")
    ckpt = _load_checkpoint(root / f"fold_{fold}" / "checkpoint_final.pth")
    weights = ckpt.get("network_weights", ckpt.get("state_dict")) if isinstance(ckpt, dict) else None
    if not isinstance(weights, dict):
        raise BundleError(f"{root}/fold_{fold}/checkpoint_final.pth has no 'network_weights' or 'state_dict'")
    state = clean_state_dict(dict(weights))
    arch, arch_cfg = stunet_arch_from_weights(state)

    config_name = configuration or (ckpt.get("init_args") or {}).get("configuration") or "3d_fullres"
    cfg = _configuration(plans, config_name)
    ndim = len(cfg["patch_size"])
    if ndim != 3:
        raise BundleError(f"configuration {config_name!r} is {ndim}D; medpipe imports 3D STU-Net models")
    n_pools = len(arch_cfg["conv_kernel_sizes"]) - 1
    pools_net = _stunet_pools(cfg["pool_op_kernel_sizes"], n_pools, ndim)

    # Network axis a sees our voxel axis ours[a]; see the module docstring.
    tf = list(plans.get("transpose_forward", range(ndim)))
    reversed_reader = plans.get("image_reader_writer", "SimpleITKIO") not in _NIBABEL_READERS
    ours = [(ndim - 1 - t) if reversed_reader else t for t in tf]
    inv = [ours.index(b) for b in range(ndim)]
    arch_cfg["pool_op_kernel_sizes"] = [[p[inv[b]] for b in range(ndim)] for p in pools_net]
    arch_cfg["conv_kernel_sizes"] = [[k[inv[b]] for b in range(ndim)] for k in arch_cfg["conv_kernel_sizes"]]
    state = _permute_spatial(state, inv)

    channel_names = [str(v) for _, v in sorted((dataset.get("channel_names") or dataset.get("modality") or
                                                {"0": "image"}).items(), key=lambda kv: int(kv[0]))]
    normalization = _normalization(cfg, plans, len(channel_names))
    if modality is None:
        modality = "CT" if normalization["scheme"] == "ct" or channel_names[0].upper() == "CT" else "MR"
    mirror = ckpt.get("inference_allowed_mirroring_axes")
    tta_axes = sorted(ours[a] for a in (range(ndim) if mirror is None else mirror))
    config = BundleConfig.model_validate({
        "name": name or str(plans.get("dataset_name", root.name)).lower(),
        "version": version,
        "description": f"imported from nnU-Net v2 results {root.name} (fold {fold}, {config_name})",
        "architecture": arch,
        "arch_config": arch_cfg,
        "modality": modality.upper(),
        "channels": channel_names,
        "labels": _labels(dataset, arch_cfg["num_classes"]),
        "preprocessing": {
            "orientation": orientation,
            "spacing": [float(cfg["spacing"][inv[b]]) for b in range(ndim)],
            "normalization": normalization,
            "patch_size": [int(cfg["patch_size"][inv[b]]) for b in range(ndim)],
            "tta_axes": tta_axes,
            "crop_foreground": True,  # nnU-Net always crops to the non-zero region first
        },
        "training": {"source": "nnU-Net v2", "trainer": ckpt.get("trainer_name"),
                     "plans": plans.get("plans_name"), "configuration": config_name, "fold": str(fold),
                     "dataset": plans.get("dataset_name"), "epoch": ckpt.get("current_epoch")},
    })
    model = create_model(arch, **arch_cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BundleError(f"checkpoint weights do not load into {arch}: {str(exc).splitlines()[0]}") from exc
    return save_bundle(out_bundle, model, config, overwrite=overwrite)
