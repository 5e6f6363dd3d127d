"""Segment an image on its own grid with a bundle: its preprocessing, the engine, the way back.

The bundle says how it was trained (``Preprocessing.recipe``), so the user never has to:

* ``medpipe``: reorient → [crop] → resample to the spacing (Catmull-Rom) → normalise;
* ``nnunet`` (imported nnU-Net models): [reorient] → crop to the filled non-zero box →
  normalise each channel at the original spacing → resample to a shape with nnU-Net's
  B-spline rule.

Either way the network's stitched output (logits, or the features in front of a linear
head) is resampled back onto the (cropped) input grid *before* the decision, streamed slab
by slab (``grid_export``), and the exact steps (crop, reorientation) are undone by
replaying the geometry history: the label map has the input's shape and affine, always.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medpipe.errors import BundleError, InputError
from medpipe.image import Image
from medpipe.models.bundle import Bundle

__all__ = ["SegmentationResult", "segment_image", "check_image_for_bundle", "network_input"]


@dataclass
class SegmentationResult:
    labels: Image  # on the input image's grid, ``meta.extra`` with label names and colours
    facts: dict[str, Any] = field(default_factory=dict)


def check_image_for_bundle(image: Image, bundle: Bundle, where: str = "the image") -> None:
    """Refuse, in one sentence, an image the bundle cannot segment (before any work)."""
    cfg = bundle.config
    if cfg.task != "segmentation":
        raise BundleError(f"bundle {cfg.name} is a {cfg.task} bundle, not a segmentation model")
    from medpipe.pipeline.stages.segment import check_channels

    check_channels(cfg, image)  # names the RGB/grey-scale or extra-sequence mix-ups
    arr = image.array
    if not np.issubdtype(arr.dtype, np.number) or (arr.dtype.kind == "f" and not np.isfinite(arr).all()):
        raise InputError(f"{where} holds NaN or infinite values; medpipe does not guess what they should be")


def _tta_axes(tta: bool | Sequence[int], bundle: Bundle) -> list[int]:
    if tta is True:
        return list(bundle.config.preprocessing.tta_axes)
    if tta is False:
        return []
    return [int(a) for a in tta]


def _prepare_medpipe(image: Image, bundle: Bundle) -> tuple[Image, Image, Any, dict[str, Any]]:
    """(processed network input, the grid the output goes back to, export sink factory, facts)."""
    from medpipe.transforms import crop_foreground, normalize, reorient, resample_to_spacing

    pre = bundle.config.preprocessing
    x = image if pre.orientation == "native" else reorient(image, pre.orientation).image
    if pre.crop_foreground:
        thr = -500.0 if bundle.config.modality == "CT" else None
        x = crop_foreground(x, thr).image
    resampled, rec = resample_to_spacing(x, pre.volume_spacing)  # 2D bundles: in-plane only
    norm = pre.normalization
    net, _ = normalize(resampled, norm.scheme, clip=norm.clip, mean=norm.mean, std=norm.std)
    mapping = np.linalg.inv(net.affine) @ x.affine  # x voxel -> network voxel (axis-aligned)
    a, b = np.diag(mapping)[:3], mapping[:3, 3]
    facts = {"network_grid": list(net.shape), "network_spacing": [round(float(s), 4) for s in net.spacing],
             "resample_orders": rec["orders"]}
    return net, x, (lambda **kw: _affine_sink(net.shape, x.shape, a, b, [1, 1, 1], **kw)), facts


def _affine_sink(net_shape, out_shape, a, b, orders, **kw):
    from medpipe.inference.grid_export import GridExport

    return GridExport.affine_map(net_shape, out_shape, a, b, orders, **kw)


def _prepare_nnunet(image: Image, bundle: Bundle, previous: Image | None = None) -> tuple[Image, Image, Any, dict[str, Any]]:
    from medpipe.inference.grid_export import GridExport
    from medpipe.transforms import crop_to_bbox, foreground_bbox, reorient
    from medpipe.transforms.nnunet_normalize import nonzero_mask, normalize_channels
    from medpipe.transforms.nnunet_resample import (
        compute_new_shape,
        resize_taps,
        resize_to_shape,
        separate_axis,
    )

    pre = bundle.config.preprocessing
    rs = pre.resampling
    x = image if pre.orientation == "native" else reorient(image, pre.orientation).image
    box = foreground_bbox(x, None) or [[0, s] for s in x.shape]  # any channel non-zero (nnU-Net)
    x = crop_to_bbox(x, box).image
    schemes = pre.channel_schemes(x.n_channels)
    mask = nonzero_mask(x.array) if previous is not None or any(s.use_mask for s in schemes) else None
    data = normalize_channels(x.array, schemes, mask)
    spacing = [float(s) for s in x.spacing]
    new_shape = compute_new_shape(x.shape, spacing, pre.spacing)
    axis_in = separate_axis(spacing, pre.spacing, force=rs.separate_z, threshold=rs.anisotropy_threshold)
    data = resize_to_shape(data, new_shape, order=rs.image_order, lowres_axis=axis_in, z_order=rs.z_order)
    if previous is not None:  # cascade: the first stage's labels, as nnU-Net feeds them to the second
        data = np.concatenate([data, _cascade_channels(previous, pre.orientation, box, mask, new_shape, axis_in,
                                                       bundle.config.cascade.one_hot_labels)])
    # The network grid: same directions, voxel o at input position (o + 0.5) * old / new - 0.5.
    scale = np.array(x.shape, float) / np.array(new_shape, float)
    affine = x.affine.copy()
    affine[:3, :3] = x.affine[:3, :3] * scale[None, :]
    affine[:3, 3] = x.affine[:3, :3] @ (0.5 * scale - 0.5) + x.affine[:3, 3]
    net = x.with_geometry(data, affine)
    axis_out = separate_axis(pre.spacing, spacing, force=rs.separate_z, threshold=rs.anisotropy_threshold)
    orders = [rs.z_order if ax == axis_out else rs.probability_order for ax in range(3)]

    def sink(**kw: Any) -> GridExport:
        taps = [resize_taps(n, m, o) for n, m, o in zip(new_shape, x.shape, orders, strict=True)]
        return GridExport(taps, **kw)

    facts = {"crop_box": box, "network_grid": list(new_shape),
             "network_spacing": [round(float(s), 4) for s in np.array(spacing) * scale],
             "separate_axis_in": axis_in, "separate_axis_out": axis_out, "export_orders": orders}
    return net, x, sink, facts


def _cascade_channels(previous: Image, orientation: str, box: list[list[int]], mask: np.ndarray,
                      new_shape: list[int], axis: int | None, labels: list[int]) -> np.ndarray:
    """One-hot of the first stage's labels on the network grid: cropped like the image, -1
    outside the filled non-zero mask, resized as nnU-Net resizes segmentations."""
    from medpipe.transforms import crop_to_bbox, reorient
    from medpipe.transforms.nnunet_resample import resize_segmentation

    prev = previous if orientation == "native" else reorient(previous, orientation).image
    seg = crop_to_bbox(prev, box).image.array[0].astype(np.int16)
    seg[(seg == 0) & ~mask] = -1
    seg = resize_segmentation(seg, new_shape, lowres_axis=axis)
    return np.stack([(seg == v).astype(np.float32) for v in labels])


def network_input(image: Image, bundle: Bundle) -> Image:
    """``image`` preprocessed as ``bundle`` was trained (the network's input grid)."""
    check_image_for_bundle(image, bundle)
    prepare = _prepare_nnunet if bundle.config.preprocessing.recipe == "nnunet" else _prepare_medpipe
    return prepare(image, bundle)[0]


def segment_image(image: Image, bundle: Bundle, *, tta: bool | Sequence[int] = False, overlap: float = 0.5,
                  precision: str = "auto", backend: str = "auto", batch_size: int | None = None,
                  accumulation: str = "auto", stitch: str = "auto", device: str = "cpu",
                  memory_budget_gb: float | None = None,
                  progress: bool | Callable[..., Iterable[Any]] = True) -> SegmentationResult:
    """Labels for ``image`` (on its grid) from ``bundle``, preprocessed as the bundle was trained."""
    from medpipe.inference import predict
    from medpipe.inference.ensemble import ensemble_of
    from medpipe.transforms import restore_geometry

    check_image_for_bundle(image, bundle)
    cfg, pre = bundle.config, bundle.config.preprocessing
    t0 = time.perf_counter()
    first_stage: dict[str, Any] = {}
    if cfg.cascade is not None:
        from medpipe.models.bundle import load_bundle

        first = segment_image(image, load_bundle(bundle.path / cfg.cascade.previous), tta=tta, overlap=overlap,
                              precision=precision, backend=backend, batch_size=batch_size,
                              accumulation=accumulation, stitch=stitch, device=device,
                              memory_budget_gb=memory_budget_gb, progress=progress)
        first_stage = {"cascade_first_stage": {k: first.facts[k] for k in ("seconds_total", "network_grid")}}
        net_input, out_grid, make_sink, facts = _prepare_nnunet(image, bundle, first.labels)
    elif pre.recipe == "nnunet":
        net_input, out_grid, make_sink, facts = _prepare_nnunet(image, bundle)
    else:
        net_input, out_grid, make_sink, facts = _prepare_medpipe(image, bundle)
    facts.update(first_stage)
    t_pre = time.perf_counter() - t0
    models = bundle.build_models(device)
    model = ensemble_of(models)
    class_order = cfg.regions.class_order if cfg.regions is not None else None
    sink = make_sink(num_classes=cfg.num_classes, class_order=class_order)
    result = predict(model, net_input.array, pre.patch_size, num_classes=cfg.num_classes, overlap=overlap,
                     tta_axes=_tta_axes(tta, bundle), precision=precision, batch_size=batch_size, device=device,
                     progress=progress, memory_budget_gb=memory_budget_gb, accumulation=accumulation,
                     backend=backend, int8_model=bundle.int8_path if len(models) == 1 else None, stitch=stitch,
                     sink=sink)
    t_pred = time.perf_counter() - t0 - t_pre
    labels = out_grid.with_array(result.labels[None], is_label=True)
    labels = restore_geometry(labels, image)
    labels.meta.extra["labels"] = {int(k): v.name for k, v in cfg.labels.items()}
    labels.meta.extra["colors"] = {int(k): list(v.color) for k, v in cfg.labels.items()}
    labels.meta.extra["bundle"] = {"name": cfg.name, "version": cfg.version, "architecture": cfg.architecture}
    facts = {**result.facts, **facts, "recipe": pre.recipe, "orientation": pre.orientation, "folds": len(models),
             "seconds_preprocess": round(t_pre, 3), "seconds_predict": round(t_pred, 3),
             "seconds_total": round(time.perf_counter() - t0, 3)}
    if facts["precision"] == "int8" and cfg.quantization is not None:
        facts["int8_agreement_at_quantization"] = cfg.quantization.agreement
    return SegmentationResult(labels, facts)
