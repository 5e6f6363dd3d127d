"""Turn a trained nnU-Net v2 results folder into a medpipe bundle.

Supported networks: nnU-Net's ``PlainConvUNet`` and ``ResidualEncoderUNet`` (any plans,
both plans formats, ``nnUNetTrainerBN``-style BatchNorm) and STU-Net trainers. nnU-Net
keeps a model's meaning in ``plans.json`` (patch, spacing, normalisation per channel,
resampling, network), ``dataset.json`` (labels or regions, channels) and
``fold_X/checkpoint_{final,best}.pth`` (``network_weights``, ``trainer_name``,
``inference_allowed_mirroring_axes``), and in an implicit axis order: with ``SimpleITKIO``
its arrays are the file's voxel axes reversed (z, y, x), then permuted by
``transpose_forward``. Our bundles use the image's voxel axes (i, j, k). Rather than carry a
permutation into inference we permute the *weights* (kernels, strides, patch, spacing,
mirror axes) once here: the imported network computes on an (i, j, k) array exactly what
nnU-Net's network computed on its transposed array, and tiles, Gaussian weights and
resampling are separable per axis, so they follow the permutation too.

The bundle's preprocessing recipe is ``nnunet`` (crop to non-zero → normalise at the
original spacing → resample to a shape with B-splines; logits/features resampled back
before the argmax) and its orientation ``native`` (nnU-Net never reorients), so
``segment_image`` reproduces nnU-Net's predictor. ``inference_allowed_mirroring_axes``
``None`` (NoMirroring trainers, TotalSegmentator) means no test-time mirroring; several
folds become one bundle whose logits are averaged, as nnU-Net does.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from medpipe.errors import BundleError
from medpipe.models.bundle import Bundle, BundleConfig, clean_state_dict, save_bundle
from medpipe.models.nnunet_plans import (
    NIBABEL_READERS,
    arch_config_from_kwargs,
    channel_names,
    configuration,
    configuration_architecture,
    dataset_labels,
    read_json,
)

__all__ = ["import_nnunet", "import_nnunet_cascade", "stunet_arch_from_weights", "find_folds"]

_PALETTE = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
            (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
            (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0)]
_NORMALIZATION = {"CTNormalization": "ct", "ZScoreNormalization": "zscore", "NoNormalization": "none",
                  "RescaleTo01Normalization": "rescale01", "RGBTo01Normalization": "rgb01"}
_RESAMPLING_FN = "resample_data_or_seg_to_shape"


def _load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BundleError(f"nnU-Net results folder has no {path.parent.name}/{path.name}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # nnU-Net also pickles numpy logs; only a full unpickle reads those
        warnings.warn(f"{path} holds more than tensors; loading it with full unpickling (only import "
                      "checkpoints you trust)", stacklevel=3)
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # truncated file, not a checkpoint, missing pickled class
            raise BundleError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("network_weights", ckpt.get("state_dict")), dict):
        raise BundleError(f"{path} has no 'network_weights' (not an nnU-Net v2 checkpoint)")
    return ckpt


def find_folds(root: Path, checkpoint: str) -> list[str]:
    """The folds nnU-Net's predictor would use by default: every ``fold_<n>`` holding the
    checkpoint, else ``fold_all``."""
    numbered = sorted(int(p.name[5:]) for p in root.glob("fold_*") if p.name[5:].isdigit()
                       and (p / checkpoint).is_file())
    if numbered:
        return [str(n) for n in numbered]
    if (root / "fold_all" / checkpoint).is_file():
        return ["all"]
    raise BundleError(f"nnU-Net results folder {root} has no fold_*/{checkpoint}")


def stunet_arch_from_weights(state: dict[str, torch.Tensor]) -> tuple[str, dict[str, Any]] | None:
    """Registered STU-Net size and (in_channels, num_classes, conv kernels), or None when the
    checkpoint is not an STU-Net."""
    from medpipe.models.stunet import _SIZES

    if "conv_blocks_context.0.0.conv1.weight" not in state or "seg_outputs.0.weight" not in state:
        return None
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


def _stunet_pools(plan_pools: list[list[int]], n_pools: int, ndim: int) -> list[list[int]]:
    """STU-Net's rule: drop nnU-Net v2's leading all-ones stage-0 entry, keep at most
    ``n_pools`` downsamplings and pad with ones (as ``STUNetTrainer.process_plans``)."""
    pools = [list(p) for p in plan_pools]
    if pools and all(v == 1 for v in pools[0]):
        pools = pools[1:]
    pools = pools[:n_pools]
    return pools + [[1] * ndim] * (n_pools - len(pools))


def _io_channels(state: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(input channels, outputs) of an nnU-Net network from its first conv and last head."""
    first = next((v for k, v in state.items() if k.endswith(".weight") and v.ndim >= 4
                  and (k.startswith("encoder.stages.0.") or k.startswith("encoder.stem."))), None)
    heads = sorted((k for k in state if k.startswith("decoder.seg_layers.") and k.endswith(".weight")),
                   key=lambda k: int(k.split(".")[2]))
    if first is None or not heads:
        raise BundleError("checkpoint weights are neither an nnU-Net U-Net (encoder.stages / decoder.seg_layers) "
                          "nor an STU-Net (conv_blocks_context)")
    return int(first.shape[1]), int(state[heads[-1]].shape[0])


def _normalizations(cfg: dict[str, Any], plans: dict[str, Any], n_channels: int) -> list[dict[str, Any]]:
    schemes = cfg.get("normalization_schemes") or ["ZScoreNormalization"] * n_channels
    masks = cfg.get("use_mask_for_norm") or [False] * n_channels
    if len(schemes) != n_channels:
        raise BundleError(f"plans.json lists {len(schemes)} normalization schemes for {n_channels} image channels")
    props = plans.get("foreground_intensity_properties_per_channel") or {}
    out = []
    for c, scheme in enumerate(schemes):
        if scheme not in _NORMALIZATION:
            raise BundleError(f"nnU-Net normalization {scheme!r} (channel {c}) is not supported "
                              f"({', '.join(_NORMALIZATION)})")
        entry: dict[str, Any] = {"scheme": _NORMALIZATION[scheme]}
        if scheme == "CTNormalization":
            p = props.get(str(c))
            if not p:
                raise BundleError(f"plans.json uses CTNormalization for channel {c} but has no "
                                  f"foreground_intensity_properties_per_channel['{c}']")
            entry.update(clip=[p["percentile_00_5"], p["percentile_99_5"]], mean=p["mean"], std=p["std"])
        elif scheme == "ZScoreNormalization":
            entry["use_mask"] = bool(masks[c]) if c < len(masks) else False
        out.append(entry)
    return out


def _resampling(cfg: dict[str, Any]) -> dict[str, Any]:
    for key in ("resampling_fn_data", "resampling_fn_probabilities"):
        name = cfg.get(key, _RESAMPLING_FN)
        if name != _RESAMPLING_FN:
            raise BundleError(f"plans.json {key} is {name!r}; medpipe reproduces nnU-Net's default "
                              f"{_RESAMPLING_FN} only")
    data = cfg.get("resampling_fn_data_kwargs") or {}
    probs = cfg.get("resampling_fn_probabilities_kwargs") or {}
    return {"image_order": int(data.get("order", 3)), "probability_order": int(probs.get("order", 1)),
            "z_order": int(data.get("order_z", 0)), "separate_z": data.get("force_separate_z")}


def _label_infos(names: dict[int, str], values: list[int]) -> dict[int, dict[str, Any]]:
    return {v: {"name": names[v], "color": list(_PALETTE[v % len(_PALETTE)])} for v in values}


def _permute_spatial(state: dict[str, torch.Tensor], inv: list[int]) -> dict[str, torch.Tensor]:
    """Reorder the spatial dims of every conv / transposed-conv kernel (ndim = 2 + spatial)."""
    order = [0, 1] + [2 + a for a in inv]
    return {k: (v.permute(*order).contiguous() if v.ndim == 2 + len(inv) else v) for k, v in state.items()}


def _axis_map(plans: dict[str, Any], ndim: int, orientation: str) -> list[int]:
    """``ours[n]``: the image voxel axis network axis ``n`` sees (see the module docstring)."""
    tf = [int(t) for t in plans.get("transpose_forward", range(ndim))]
    reader = str(plans.get("image_reader_writer", "SimpleITKIO"))
    if reader == "NibabelIOWithReorient" and orientation.upper() != "RAS":
        raise BundleError("this model was trained on images reoriented to RAS (NibabelIOWithReorient); import it "
                          "with orientation RAS")
    reversed_reader = reader not in NIBABEL_READERS
    return [(ndim - 1 - t) if reversed_reader else t for t in tf]


def import_nnunet(results_folder: str | Path, out_bundle: str | Path, fold: str | int | list[str | int] | None = None,
                  *, checkpoint: str = "final", name: str | None = None, version: str = "1.0",
                  modality: str | None = None, orientation: str = "native", configuration_name: str | None = None,
                  overwrite: bool = False) -> Bundle:
    """Convert ``results_folder`` (``plans.json``, ``dataset.json``, ``fold_*/checkpoint_*.pth``)
    into a bundle at ``out_bundle``.

    ``fold``: one fold (``0``, ``"all"``), a list (an ensemble), or None for every fold
    present (nnU-Net's default). ``checkpoint``: ``final`` or ``best``. ``orientation``:
    ``native`` (nnU-Net's behaviour: the file's voxel order) or the code the training
    images were stored in, when inputs may come stored otherwise (TotalSegmentator
    reorients to RAS before nnU-Net)."""
    config, models = _convert(Path(results_folder), fold, checkpoint=checkpoint, name=name, version=version,
                              modality=modality, orientation=orientation, configuration_name=configuration_name)
    return save_bundle(out_bundle, models[0], config, overwrite=overwrite, ensemble=models[1:])


def import_nnunet_cascade(lowres_folder: str | Path, fullres_folder: str | Path, out_bundle: str | Path,
                          fold: str | int | list[str | int] | None = None, **kw: Any) -> Bundle:
    """Import an nnU-Net cascade: the ``3d_lowres`` results as the bundle's first stage
    (``previous_stage/``) and the ``3d_cascade_fullres`` results as the bundle itself."""

    overwrite = kw.pop("overwrite", False)
    out = Path(out_bundle)
    low_cfg, low_models = _convert(Path(lowres_folder), fold, **kw)
    config, models = _convert(Path(fullres_folder), fold, cascade_labels=_foreground(low_cfg), **kw)
    if config.channels != low_cfg.channels or config.preprocessing.orientation != low_cfg.preprocessing.orientation:
        raise BundleError(f"{lowres_folder} and {fullres_folder} are not two stages of one cascade (channels "
                          f"{low_cfg.channels} vs {config.channels})")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="medpipe-cascade-") as scratch:
        # the first stage as a bundle of its own, copied inside the second as it is written
        # (atomically: a bundle naming a first stage is only valid with that stage inside)
        first = save_bundle(Path(scratch) / "first", low_models[0], low_cfg, ensemble=low_models[1:]).path
        files = {str(Path(config.cascade.previous) / f.relative_to(first)): f for f in first.rglob("*") if f.is_file()}
        return save_bundle(out, models[0], config, overwrite=overwrite, ensemble=models[1:], extra_files=files)


def _foreground(cfg: BundleConfig) -> list[int]:
    if cfg.regions is not None:
        return sorted(set(cfg.regions.class_order))
    return [v for v in sorted(cfg.labels) if v != 0]


def _convert(root: Path, fold: str | int | list[str | int] | None, *, checkpoint: str = "final",
             name: str | None = None, version: str = "1.0", modality: str | None = None,
             orientation: str = "native", configuration_name: str | None = None,
             cascade_labels: list[int] | None = None) -> tuple[BundleConfig, list[torch.nn.Module]]:
    """The bundle config and one loaded network per fold (see ``import_nnunet``)."""
    from medpipe.models import create_model

    if not root.is_dir():
        raise BundleError(f"nnU-Net results folder {root} does not exist")
    if checkpoint not in ("final", "best"):
        raise BundleError(f"checkpoint must be 'final' or 'best', got {checkpoint!r}")
    ckpt_name = f"checkpoint_{checkpoint}.pth"
    plans = read_json(root / "plans.json")
    dataset = read_json(root / "dataset.json")
    folds = find_folds(root, ckpt_name) if fold is None else [str(f) for f in (fold if isinstance(fold, list)
                                                                                  else [fold])]
    ckpts = [_load_checkpoint(root / f"fold_{f}" / ckpt_name) for f in folds]
    states = [clean_state_dict(dict(c.get("network_weights", c.get("state_dict")))) for c in ckpts]
    first = ckpts[0]

    config_name = configuration_name or (first.get("init_args") or {}).get("configuration") or "3d_fullres"
    cfg = configuration(plans, config_name)
    ndim = len(cfg["patch_size"])
    if ndim != 3:
        raise BundleError(f"configuration {config_name!r} is {ndim}D; medpipe's importer takes 3D configurations")
    is_cascade = bool(cfg.get("previous_stage")) or "cascade" in config_name
    if is_cascade and cascade_labels is None:
        raise BundleError(f"configuration {config_name!r} is the second stage of a cascade; import it together with "
                          f"its first stage ({cfg.get('previous_stage') or '3d_lowres'}): "
                          "medpipe models import-nnunet FULLRES OUT --lowres LOWRES")
    if cascade_labels is not None and not is_cascade:
        raise BundleError(f"{root} ({config_name}) is not a 3d_cascade_fullres model")
    state = states[0]
    stunet = stunet_arch_from_weights(state)
    if stunet is not None:  # STU-Net trainers build their own network; the plans give the pools
        arch, arch_cfg = stunet
        class_name = "STUNet"
        n_pools = len(arch_cfg["conv_kernel_sizes"]) - 1
        plan_pools = ((cfg.get("architecture") or {}).get("arch_kwargs") or {}).get("strides") \
            or cfg.get("pool_op_kernel_sizes") or []
        arch_cfg["pool_op_kernel_sizes"] = _stunet_pools(plan_pools, n_pools, ndim)
        pool_key, kernel_key = "pool_op_kernel_sizes", "conv_kernel_sizes"
    else:
        in_ch, n_out = _io_channels(state)
        class_name, arch_kwargs = configuration_architecture(cfg)
        arch, arch_cfg = arch_config_from_kwargs(class_name, arch_kwargs, in_channels=in_ch, num_classes=n_out,
                                                 batch_norm=any(k.endswith("running_mean") for k in state))
        pool_key, kernel_key = "strides", "kernel_sizes"

    ours = _axis_map(plans, ndim, orientation)
    inv = [ours.index(b) for b in range(ndim)]  # network axis that sees our axis b
    arch_cfg[pool_key] = [[p[inv[b]] for b in range(ndim)] for p in arch_cfg[pool_key]]
    arch_cfg[kernel_key] = [[k[inv[b]] for b in range(ndim)] for k in arch_cfg[kernel_key]]
    states = [_permute_spatial(s, inv) for s in states]

    names = channel_names(dataset)
    expected_in = len(names) + len(cascade_labels or [])
    if arch_cfg["in_channels"] != expected_in:
        raise BundleError(f"the network takes {arch_cfg['in_channels']} input channels but dataset.json names "
                          f"{len(names)} ({', '.join(names)})"
                          + (f" and the first stage adds {len(cascade_labels)}" if cascade_labels else ""))
    label_names, regions, class_order = dataset_labels(dataset)
    n_out = arch_cfg["num_classes"]
    if regions is None:
        if sorted(label_names) != list(range(n_out)):
            raise BundleError(f"dataset.json labels {sorted(label_names)} do not match the network's {n_out} outputs")
        labels = _label_infos(label_names, list(range(n_out)))
        regions_cfg = None
    else:
        if len(regions) != n_out:
            raise BundleError(f"dataset.json defines {len(regions)} regions but the network has {n_out} outputs")
        painted = {v: label_names[i] for i, v in enumerate(class_order)}
        labels = _label_infos({0: "background", **painted}, sorted({0, *class_order}))
        regions_cfg = {"labels": regions, "class_order": class_order}
    norms = _normalizations(cfg, plans, len(names))
    if modality is None:
        modality = "CT" if norms[0]["scheme"] == "ct" or names[0].upper() == "CT" else "MR"
    mirror = first.get("inference_allowed_mirroring_axes")  # None or missing: no mirroring (nnU-Net)
    tta_axes = sorted(ours[int(a)] for a in mirror) if mirror else []
    config = BundleConfig.model_validate({
        "name": name or str(plans.get("dataset_name", root.name)).lower(),
        "version": version,
        "description": f"imported from nnU-Net v2 results {root.name} (fold {', '.join(folds)}, {config_name}, "
                       f"{ckpt_name})",
        "architecture": arch,
        "arch_config": arch_cfg,
        "modality": modality.upper(),
        "channels": names,
        "labels": labels,
        "regions": regions_cfg,
        "ensemble": [f"weights_fold_{f}.safetensors" for f in folds[1:]],
        "cascade": {"one_hot_labels": cascade_labels} if cascade_labels else None,
        "preprocessing": {
            "orientation": orientation,
            "spacing": [float(cfg["spacing"][inv[b]]) for b in range(ndim)],
            "normalization": norms[0],
            "channel_normalization": norms if len(norms) > 1 else None,
            "patch_size": [int(cfg["patch_size"][inv[b]]) for b in range(ndim)],
            "tta_axes": tta_axes,
            "crop_foreground": True,  # nnU-Net always crops to the non-zero region first
            "recipe": "nnunet",
            "resampling": _resampling(cfg),
        },
        "training": {"source": "nnU-Net v2", "trainer": first.get("trainer_name"),
                     "plans": plans.get("plans_name"), "configuration": config_name, "folds": folds,
                     "checkpoint": ckpt_name, "dataset": plans.get("dataset_name"),
                     "epoch": first.get("current_epoch"), "network": class_name,
                     "mirror_axes": list(mirror) if mirror else None},
    })
    models = []
    for f, s in zip(folds, states, strict=True):
        model = create_model(arch, **arch_cfg)
        try:
            model.load_state_dict(s, strict=True)
        except RuntimeError as exc:
            raise BundleError(f"fold {f} weights do not load into {arch}: {str(exc).splitlines()[0]}") from exc
        models.append(model)
    return config, models
