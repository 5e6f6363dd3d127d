"""Post-training int8 quantisation of a bundle's network (OpenVINO + NNCF), with an accuracy gate.

Why: the CPUs hospitals run inference on mostly lack AMX but have VNNI (AVX512-VNNI or
AVX-VNNI) int8 dot products. On the benchmark machine OpenVINO ran a STU-Net-S 96^3
patch in int8 ~2.3x faster than in fp32, and a whole 160^3 volume ~5x faster than MONAI
fp32 (benchmarks/RESULTS.md, "Sliding-window inference") — the only path to several-fold
CPU speed-ups there, since bf16 without AMX is slower than fp32.

Post-training quantisation needs calibration data and can cost accuracy, so it is an
explicit one-time step per bundle (like a TensorRT calibration), and its result is
checked before anything is written: every validation volume, segmented whole by the
sliding-window engine, must get the same argmax from the int8 model as from the fp32
model on at least ``min_agreement`` (default 99.5 %) of its voxels, and every structure
of at least ``MIN_GATED_VOXELS`` voxels must keep a Dice of at least ``min_class_dice``
(default 0.95) between the two — voxel agreement alone is dominated by background and
would let a small organ's outline drift (seen on a kidney: 99.6 % agreement, Dice 0.87).
When quantising every
layer misses the gate, the first convolution and the output convolutions are kept in
fp32 and it is tried again; if that misses too, NNCF's accuracy control ranks the
remaining quantised layers by how much the worst structure's Dice recovers when each is
kept in fp32 (measured on the validation tiles) and keeps the worst offenders in fp32 until
it is within half the Dice margin; if the whole-volume gate still fails, nothing is
written and the error gives the numbers. Calibration images go through the bundle's own preprocessing; with two or
more images a third (at least one) is held out for validation only.

The result is a new bundle (the source is never modified): the same weights and
config, plus ``int8/model.xml|bin`` and a ``quantization`` block in ``model.yaml`` that
records the agreement, the calibration, the tool versions and the SHA-256 of the fp32
weights it was made from (``load_bundle`` refuses the int8 model if they change).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medpipe.errors import BundleError, InputError, ResourceError
from medpipe.image import Image
from medpipe.inference.tiling import pad_amounts, plan_tiles

__all__ = ["DEFAULT_MIN_AGREEMENT", "QuantizationReport", "calibration_patches", "edge_convolutions",
           "quantize_network", "quantize_accuracy_controlled", "depthwise_convolutions", "unquantized_convolutions",
           "worst_structure_dice", "fp32_references", "check_agreement", "quantize_bundle"]

DEFAULT_MIN_AGREEMENT = 0.995
DEFAULT_MIN_CLASS_DICE = 0.95
MIN_GATED_VOXELS = 1000  # smaller structures are reported, not gated (a few voxels swing their Dice)
DEFAULT_MAX_PATCHES = 64
_ATTEMPTS = ("all layers int8", "first and output convolutions kept fp32",
             "accuracy-controlled: the most harmful layers kept fp32")
MAX_RESTORED_LAYERS = 12  # accuracy control gives up after keeping this many more layer groups in fp32


@dataclass
class QuantizationReport:
    """What ``quantize_bundle`` measured: per attempt and per validation volume."""

    accepted: bool
    attempt: str | None
    agreement: float  # worst validation volume of the accepted (or last) attempt
    min_agreement: float
    worst_class_dice: float = 1.0  # over gated structures of all validation volumes
    min_class_dice: float = DEFAULT_MIN_CLASS_DICE
    attempts: list[dict[str, Any]] = field(default_factory=list)
    calibration: dict[str, Any] = field(default_factory=dict)


def _import_nncf():
    try:
        import nncf
    except ImportError as exc:
        raise ResourceError("quantisation needs the 'nncf' package, which is not installed: pip install nncf") from exc
    return nncf


def calibration_patches(volumes: Sequence[np.ndarray], patch: Sequence[int], *, overlap: float = 0.5,
                        max_patches: int = DEFAULT_MAX_PATCHES) -> list[np.ndarray]:
    """``(1, C, *patch)`` float32 inputs cut exactly where the sliding-window engine cuts its tiles
    (same padding and tile plan), spread evenly over all tiles of all volumes."""
    patch = tuple(int(p) for p in patch)
    tiles: list[tuple[int, tuple[int, ...]]] = []
    padded = []
    for vi, vol in enumerate(volumes):
        if vol.ndim != 4:
            raise InputError(f"calibration volumes must be channel-first (C, I, J, K), got shape {vol.shape}")
        pads = pad_amounts(vol.shape[1:], patch)
        v = np.pad(vol.astype(np.float32, copy=False), [(0, 0), *pads])
        padded.append(v)
        plan = plan_tiles(v.shape[1:], patch, overlap)
        tiles += [(vi, org) for _, origins in plan.groups() for org in origins]
    if not tiles:
        raise InputError("no calibration volumes were given")
    pick = np.unique(np.linspace(0, len(tiles) - 1, min(max_patches, len(tiles))).round().astype(int))
    out = []
    for i in pick:
        vi, org = tiles[i]
        sl = tuple(slice(o, o + p) for o, p in zip(org, patch, strict=True))
        out.append(np.ascontiguousarray(padded[vi][(slice(None), *sl)])[None])
    return out


def edge_convolutions(om: Any) -> list[str]:
    """Names of the first convolution and of the convolutions that produce the outputs — the
    layers whose int8 error reaches the argmax most directly (input contrast, final logits)."""
    convs = _convolutions(om)
    names = [convs[0].get_friendly_name()] if convs else []
    stack = [r.input_value(0).get_node() for r in om.get_results()]
    seen: set[str] = set()
    while stack:
        node = stack.pop()
        name = node.get_friendly_name()
        if name in seen:
            continue
        seen.add(name)
        if node.get_type_name() == "Convolution":
            if name not in names:
                names.append(name)
            continue
        stack += [inp.get_source_output().get_node() for inp in node.inputs()]
    return names


def depthwise_convolutions(om: Any) -> list[str]:
    """Grouped (depthwise) convolutions, kept fp32: OpenVINO's CPU plugin found no int8 kernel for the
    reversible U-Net's depthwise 3D convolutions here ("No suitable implementations" at compile time);
    with them in fp32 the rest quantises and compiles."""
    return [op.get_friendly_name() for op in om.get_ops() if op.get_type_name() == "GroupConvolution"]


def _convolutions(om: Any) -> list[Any]:
    return [op for op in om.get_ordered_ops() if op.get_type_name() == "Convolution"]


def unquantized_convolutions(qm: Any) -> list[str]:
    """Names of the convolutions of a quantised ``openvino.Model`` whose input is not
    quantised (they run in floating point): what an attempt actually kept in fp32."""
    def quantized(node: Any) -> bool:  # NNCF quantises a Concat's inputs, not its output
        kind = node.get_type_name()
        if kind == "Concat":
            return all(quantized(inp.get_source_output().get_node()) for inp in node.inputs())
        return kind == "FakeQuantize"

    return [op.get_friendly_name() for op in _convolutions(qm) if not quantized(op.input_value(0).get_node())]


def quantize_network(model: torch.nn.Module, patches: Sequence[np.ndarray], *, keep_fp32: Sequence[str] = (),
                     om: Any = None) -> Any:
    """The int8 ``openvino.Model`` of ``model`` calibrated on ``patches`` (NNCF post-training
    quantisation: per-channel symmetric weights, asymmetric activations — LeakyReLU outputs
    are signed — and bias correction). ``keep_fp32`` names OpenVINO ops left unquantised;
    ``om`` is an already converted fp32 model of ``model`` (saves a conversion)."""
    nncf = _import_nncf()
    from medpipe.inference.openvino_backend import convert_to_openvino

    if not patches:
        raise InputError("quantisation needs at least one calibration patch")
    if om is None:
        om, _ = convert_to_openvino(model.eval(), torch.from_numpy(patches[0]))
    return nncf.quantize(om, nncf.Dataset(list(patches)), **_ptq_options(nncf, patches, keep_fp32))


def _ptq_options(nncf: Any, patches: Sequence[np.ndarray], keep_fp32: Sequence[str]) -> dict[str, Any]:
    """The post-training quantisation settings every attempt shares."""
    options: dict[str, Any] = {"preset": nncf.QuantizationPreset.MIXED, "subset_size": len(patches),
                               "fast_bias_correction": True}
    if keep_fp32:
        options["ignored_scope"] = nncf.IgnoredScope(names=list(keep_fp32), validate=False)
    return options


def _overlap_counts(ref: np.ndarray, got: np.ndarray, num_classes: int) -> np.ndarray:
    """``(3, num_classes)``: per label, voxels labelled alike, size in ``ref`` + size in ``got``,
    and the larger of the two sizes (one pass of ``bincount``, not a mask per class)."""
    ref, got = np.asarray(ref).ravel(), np.asarray(got).ravel()
    same = np.bincount(ref[ref == got], minlength=num_classes)[:num_classes]
    na = np.bincount(ref, minlength=num_classes)[:num_classes]
    nb = np.bincount(got, minlength=num_classes)[:num_classes]
    return np.stack([same, na + nb, np.maximum(na, nb)])


def worst_structure_dice(pairs: Sequence[tuple[np.ndarray, np.ndarray]], num_classes: int) -> float:
    """The lowest Dice, pooled over ``(reference, labels)`` pairs, of the structures with at least
    ``MIN_GATED_VOXELS`` voxels in either — the gate's structure criterion on any set of
    arrays (whole volumes or tiles); mean voxel agreement when no structure is that large."""
    if not pairs:
        return 1.0
    counts = sum(_overlap_counts(ref, got, num_classes) for ref, got in pairs)
    gated = [c for c in range(1, num_classes) if counts[2, c] >= MIN_GATED_VOXELS]
    if not gated:
        return float(np.mean([(ref == got).mean() for ref, got in pairs]))
    return float(min(2.0 * counts[0, c] / counts[1, c] for c in gated))


def quantize_accuracy_controlled(om: Any, patches: Sequence[np.ndarray], validation: Sequence[np.ndarray],
                                 num_classes: int, *, max_drop: float, keep_fp32: Sequence[str] = (),
                                 max_restored: int = MAX_RESTORED_LAYERS) -> Any:
    """The int8 ``openvino.Model`` of the fp32 ``om`` with NNCF accuracy control: after
    quantising, the groups of quantisers are ranked by how much the worst structure's Dice
    (int8 vs fp32 argmax on the ``validation`` tiles) recovers when each is removed, and the
    worst are removed one by one until that Dice is within ``max_drop`` of 1."""
    nncf = _import_nncf()
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    if not patches or not validation:
        raise InputError("accuracy-controlled quantisation needs calibration and validation patches")
    reference = ov.Core().compile_model(om, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    out = reference.output(0)
    items = [(x, np.asarray(reference(x)[out]).argmax(1)) for x in validation]

    def validate(compiled: Any, data: Any) -> tuple[float, list[float]]:
        pairs = [(ref, np.asarray(compiled(x)[compiled.output(0)]).argmax(1)) for x, ref in data]
        # per-tile agreement picks the ranking tiles (where int8 differs most); the metric is the gate's
        return worst_structure_dice(pairs, num_classes), [float((r == g).mean()) for r, g in pairs]

    restorer = AdvancedAccuracyRestorerParameters(max_num_iterations=max_restored, num_ranking_workers=1,
                                                  ranking_subset_size=min(len(items), 8))
    return nncf.quantize_with_accuracy_control(
        om, nncf.Dataset(list(patches)), nncf.Dataset(items), validate, max_drop=max_drop,
        advanced_accuracy_restorer_parameters=restorer, **_ptq_options(nncf, patches, keep_fp32))


def fp32_references(model: torch.nn.Module, volumes: Sequence[tuple[str, np.ndarray]], patch: Sequence[int],
                    num_classes: int, *, overlap: float = 0.5) -> list[tuple[np.ndarray, float]]:
    """(labels, seconds) of each volume segmented whole with the fp32 network (OpenVINO): the
    reference every quantisation attempt is checked against, computed once."""
    from medpipe.inference.sliding_window import predict

    refs = []
    for _, vol in volumes:
        t = time.perf_counter()
        labels = predict(model, vol, patch, num_classes=num_classes, overlap=overlap, precision="fp32",
                         backend="openvino", progress=False).labels
        refs.append((labels, time.perf_counter() - t))
    return refs


def check_agreement(model: torch.nn.Module, int8_xml: Path, volumes: Sequence[tuple[str, np.ndarray]],
                    references: Sequence[tuple[np.ndarray, float]], patch: Sequence[int], num_classes: int, *,
                    overlap: float = 0.5) -> list[dict[str, Any]]:
    """Segment each volume whole with the int8 model and compare with its fp32 ``references``
    (``fp32_references``): the fraction of voxels with the same label, the Dice of each class
    between the two, and times."""
    from medpipe.inference.sliding_window import predict

    rows = []
    for (name, vol), (ref, t32) in zip(volumes, references, strict=True):
        t = time.perf_counter()
        got = predict(model, vol, patch, num_classes=num_classes, overlap=overlap, precision="int8",
                      int8_model=int8_xml, progress=False).labels
        t8 = time.perf_counter() - t
        same, sizes, larger = _overlap_counts(ref, got, num_classes)
        dice = {c: round(2.0 * int(same[c]) / int(sizes[c]), 5) for c in range(1, num_classes) if sizes[c]}
        gated = [c for c in dice if larger[c] >= MIN_GATED_VOXELS]
        rows.append({"volume": name, "agreement": float((ref == got).mean()), "dice_vs_fp32": dice,
                     "gated_classes": gated, "worst_gated_dice": min((dice[c] for c in gated), default=1.0),
                     "fp32_seconds": round(t32, 2), "int8_seconds": round(t8, 2)})
    return rows


def _preprocessed(paths: Sequence[Path], bundle: Any) -> list[tuple[str, np.ndarray]]:
    from medpipe.io.dicom import read_image
    from medpipe.training.preprocess import preprocess_image

    cfg = bundle.config
    out = []
    for p in paths:
        if not Path(p).exists():
            raise InputError(f"calibration image {p} does not exist")
        img: Image = read_image(p)
        modality = (img.meta.modality or "").upper()
        if modality and modality != cfg.modality:
            raise BundleError(f"calibration image {p} is {modality}, bundle {cfg.name} is for {cfg.modality}")
        if img.n_channels != len(cfg.channels):
            raise BundleError(f"calibration image {p} has {img.n_channels} channel(s), bundle {cfg.name} expects "
                              f"{len(cfg.channels)}")
        if not np.isfinite(img.array).all():
            raise InputError(f"calibration image {p} contains NaN or infinite values")
        pre = preprocess_image(img, cfg.preprocessing.model_dump())
        out.append((Path(p).name, np.asarray(pre.array, np.float32)))
    return out


def _split(volumes: list[tuple[str, np.ndarray]]) -> tuple[list, list]:
    """(calibration, validation): a third (at least one) held out when there are two or more."""
    if len(volumes) == 1:
        return volumes, volumes
    n_val = max(1, len(volumes) // 3)
    return volumes[:-n_val], volumes[-n_val:]


def quantize_bundle(src: str | Path, calibration: Sequence[str | Path], out: str | Path, *,
                    min_agreement: float = DEFAULT_MIN_AGREEMENT, min_class_dice: float = DEFAULT_MIN_CLASS_DICE,
                    max_patches: int = DEFAULT_MAX_PATCHES, max_restored: int = MAX_RESTORED_LAYERS,
                    overwrite: bool = False, log: Callable[[str], None] | None = None) -> tuple[Any, QuantizationReport]:
    """Write ``out``: bundle ``src`` plus an int8 model that passed the gate. Returns the loaded
    new bundle and the report; raises ``BundleError`` (nothing written) when the gate fails.
    ``max_restored`` caps how many layer groups accuracy control may put back in fp32 (each
    costs speed; 0 skips that attempt)."""
    import openvino as ov

    from medpipe.io.atomic import atomic_dir
    from medpipe.models.bundle import (
        CONFIG_FILE,
        INT8_XML,
        WEIGHTS_FILE,
        Quantization,
        file_sha256,
        load_bundle,
        write_config,
    )

    nncf = _import_nncf()
    say = log or (lambda _msg: None)
    src, out = Path(src), Path(out)
    for what, v in (("min_agreement", min_agreement), ("min_class_dice", min_class_dice)):
        if not 0.0 <= v <= 1.0:
            raise InputError(f"{what} must be in [0, 1], got {v}")
    if max_restored < 0:
        raise InputError(f"max_restored must be >= 0, got {max_restored}")
    if out.resolve() == src.resolve():
        raise InputError(f"the quantised bundle must be a new folder, not the source bundle {src} "
                         "(medpipe never modifies what it was given)")
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists; choose another folder or pass overwrite")
    bundle = load_bundle(src)
    cfg = bundle.config
    patch = list(cfg.preprocessing.patch_size)

    def cut(vols: list[np.ndarray]) -> list[np.ndarray]:
        """Calibration tiles; a 2D bundle's are single slices (the 2D graph is quantised)."""
        if len(patch) == 3:
            return calibration_patches(vols, patch, max_patches=max_patches)
        return [p[..., 0] for p in calibration_patches(vols, [*patch, 1], max_patches=max_patches)]
    if not calibration:
        raise InputError("quantisation needs at least one calibration image (--calibration)")
    volumes = _preprocessed([Path(p) for p in calibration], bundle)
    calib, valid = _split(volumes)
    patches = cut([v for _, v in calib])
    say(f"calibrating on {len(patches)} patch(es) from {len(calib)} volume(s); validating on {len(valid)}")
    model = bundle.build_model()
    from medpipe.inference.openvino_backend import convert_to_openvino

    fp32_model, _ = convert_to_openvino(model, torch.from_numpy(patches[0]))
    report = QuantizationReport(False, None, 0.0, min_agreement, min_class_dice=min_class_dice,
                                calibration={"volumes": [n for n, _ in calib], "patches": len(patches),
                                             "validation_volumes": [n for n, _ in valid],
                                             "validated_on_calibration_data": len(volumes) == 1})
    references = fp32_references(model, valid, patch, cfg.num_classes)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for item in src.iterdir():  # everything the source bundle holds, except an older int8 model
            if item.name in (CONFIG_FILE,) or (cfg.quantization and item.name == cfg.quantization.folder):
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        xml = tmp / "int8" / INT8_XML
        for attempt in _ATTEMPTS if max_restored else _ATTEMPTS[:2]:
            keep = (edge_convolutions(fp32_model) if attempt != _ATTEMPTS[0] else []) + depthwise_convolutions(fp32_model)
            t = time.perf_counter()
            if attempt == _ATTEMPTS[2]:
                tiles = cut([v for _, v in valid])
                say(f"{attempt}: ranking layers on {len(tiles)} validation tile(s)")
                qm = quantize_accuracy_controlled(fp32_model.clone(), patches, tiles, cfg.num_classes,
                                                  max_drop=(1.0 - min_class_dice) / 2, keep_fp32=keep,
                                                  max_restored=max_restored)
            else:
                qm = quantize_network(model, patches, keep_fp32=keep, om=fp32_model.clone())
            q_s = time.perf_counter() - t
            keep = unquantized_convolutions(qm)
            if xml.parent.exists():
                shutil.rmtree(xml.parent)
            xml.parent.mkdir()
            ov.save_model(qm, str(xml), compress_to_fp16=False)
            rows = check_agreement(model, xml, valid, references, patch, cfg.num_classes)
            worst = min(r["agreement"] for r in rows)
            worst_dice, where = min(((r["dice_vs_fp32"][c], f"{cfg.labels[c].name} in {r['volume']}")
                                     for r in rows for c in r["gated_classes"]), default=(1.0, "-"))
            report.attempts.append({"attempt": attempt, "kept_fp32": keep, "quantize_seconds": round(q_s, 1),
                                    "agreement": worst, "worst_class_dice": worst_dice, "volumes": rows})
            report.agreement, report.worst_class_dice, report.attempt = worst, worst_dice, attempt
            report.attempts[-1]["worst_structure"] = where
            say(f"{attempt}: agreement with fp32 {worst:.4%} (gate {min_agreement:.2%}), worst structure Dice "
                f"{worst_dice:.4f} ({where}; gate {min_class_dice:.2f})")
            if worst >= min_agreement and worst_dice >= min_class_dice:
                report.accepted = True
                break
        if not report.accepted:
            raise BundleError(
                f"the int8 model of bundle {cfg.name} agrees with fp32 on only {report.agreement:.2%} of the voxels "
                f"of its worst validation volume (gate {min_agreement:.2%}) with a worst structure Dice of "
                f"{report.worst_class_dice:.3f} ({report.attempts[-1]['worst_structure']}; gate "
                f"{min_class_dice:.2f}), even with {len(report.attempts[-1]['kept_fp32'])} of "
                f"{len(_convolutions(fp32_model))} convolutions kept in fp32; no bundle was written to {out}")
        best = report.attempts[-1]
        speedup = (sum(r["fp32_seconds"] for r in best["volumes"]) /
                   max(1e-9, sum(r["int8_seconds"] for r in best["volumes"])))
        report.calibration.update(attempt=report.attempt, kept_fp32=best["kept_fp32"],
                                  measured_speedup=round(speedup, 2))
        quant = Quantization(patch_size=patch, weights_sha256=file_sha256(tmp / WEIGHTS_FILE),
                             agreement=round(report.agreement, 6), min_agreement=min_agreement,
                             worst_class_dice=round(report.worst_class_dice, 5), min_class_dice=min_class_dice,
                             calibration=report.calibration,
                             tools={"openvino": ov.__version__, "nncf": nncf.__version__})
        write_config(tmp, cfg.model_copy(update={"quantization": quant}))
    return load_bundle(out), report
