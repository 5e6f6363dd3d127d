"""Model bundles: one directory = ``model.yaml`` + ``weights.safetensors``.

A bundle carries everything inference needs — architecture + config, label names and
colours, and the preprocessing the model was trained with — so inference never relies on
the user remembering spacing or normalisation. We write our own small format instead of
MONAI bundles because those hold executable config (``_target_`` expressions); ours is
pure data, validated by pydantic (unknown keys are refused), and weights are
safetensors (no pickle). ``load_bundle`` checks everything up front — fields, weights
against the architecture (on the ``meta`` device, nothing allocated), modality — so a
broken bundle fails with one sentence before any study is touched.

Example:
    >>> bundle = load_bundle("bundles/abdomen-ct", expect_modality="CT")
    >>> net = bundle.build_model()          # weights loaded, eval mode
    >>> bundle.config.preprocessing.spacing
    [1.5, 1.5, 1.5]
"""

from __future__ import annotations

import re
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import nn

from medpipe.errors import BundleError
from medpipe.io.atomic import atomic_dir

__all__ = ["BundleConfig", "LabelInfo", "Normalization", "Preprocessing", "Quantization", "Regions", "Resampling", "Cascade",
           "Bundle", "load_bundle",
           "save_bundle", "write_config", "file_sha256", "clean_state_dict", "CONFIG_FILE", "WEIGHTS_FILE",
           "INT8_XML", "MAX_SHIPPED_WEIGHTS_MB", "deduplicate_state", "expand_aliases", "resolve_bundle_path"]

CONFIG_FILE = "model.yaml"
WEIGHTS_FILE = "weights.safetensors"
INT8_XML = "model.xml"
MAX_SHIPPED_WEIGHTS_MB = 10.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LabelInfo(_Strict):
    """One output class: a name and an RGB display colour (0..255)."""

    name: str = Field(min_length=1)
    color: tuple[int, int, int] = (128, 128, 128)

    @field_validator("color")
    @classmethod
    def _rgb(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(not 0 <= c <= 255 for c in v):
            raise ValueError(f"colour components must be 0..255, got {list(v)}")
        return v


class Normalization(_Strict):
    """Intensity normalisation: ``ct`` = clip then z-score with dataset statistics;
    ``zscore`` = z-score with ``mean``/``std`` if given, else per image (``use_mask``: inside
    the filled non-zero mask only, nnU-Net's ``use_mask_for_norm``); ``rescale01`` = min-max
    to [0, 1]; ``rgb01`` = divide by 255; ``none``."""

    scheme: Literal["ct", "zscore", "rescale01", "rgb01", "none"]
    clip: tuple[float, float] | None = None
    mean: float | None = None
    std: float | None = None
    use_mask: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> Normalization:
        if self.scheme == "ct" and (self.clip is None or self.mean is None or self.std is None):
            raise ValueError("scheme 'ct' needs clip, mean and std (dataset foreground statistics)")
        if self.clip is not None and self.clip[0] > self.clip[1]:
            raise ValueError(f"clip must be [low, high] with low <= high, got {list(self.clip)}")
        if self.std is not None and self.std < 0:
            raise ValueError(f"std must not be negative, got {self.std}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")
        if self.use_mask and self.scheme != "zscore":
            raise ValueError("use_mask applies to the zscore scheme only")
        return self


class Resampling(_Strict):
    """nnU-Net's resampling rule (recipe ``nnunet``): images resized to a shape with a cubic
    B-spline (``image_order``), probabilities back with ``probability_order``, and the
    coarse axis of anisotropic data (spacing ratio > ``anisotropy_threshold``) separately
    with ``z_order``; ``separate_z`` forces that on or off (None: by the ratio)."""

    image_order: Literal[0, 1, 3] = 3
    probability_order: Literal[0, 1] = 1
    z_order: Literal[0, 1] = 0
    separate_z: bool | None = None
    anisotropy_threshold: float = Field(3.0, gt=1.0)


class Preprocessing(_Strict):
    """What the model was trained on: orientation, voxel spacing (mm, along the oriented
    array axes i, j, k), normalisation, patch size, mirror axes for TTA.

    ``orientation`` is a 3-letter code, or ``native``: the image's stored voxel order is
    used as is (nnU-Net never reorients, so an imported model sees what it was trained on).
    ``recipe`` says in which order the steps run: ``medpipe`` (reorient, resample to the
    spacing, normalise; the label map is resampled back) or ``nnunet`` (crop to the non-zero
    box, normalise at the original spacing, resample to a shape with B-splines; the
    network's output is resampled back before the argmax, as nnU-Net's predictor does).
    ``channel_normalization`` gives each input channel its own scheme (it overrides
    ``normalization``)."""

    orientation: str = "RAS"
    spacing: list[float]
    normalization: Normalization
    channel_normalization: list[Normalization] | None = None
    patch_size: list[int]
    tta_axes: list[int] = Field(default_factory=list)
    crop_foreground: bool = False
    recipe: Literal["medpipe", "nnunet"] = "medpipe"
    resampling: Resampling | None = None

    @property
    def volume_spacing(self) -> list[float | None]:
        """Target spacing per volume axis; a 2D bundle's slice axis (K) keeps its own (None)."""
        return [*self.spacing, None] if len(self.spacing) == 2 else list(self.spacing)

    @field_validator("orientation")
    @classmethod
    def _orientation(cls, v: str) -> str:
        if v.lower() == "native":
            return "native"
        v = v.upper()
        axes = {"R": "x", "L": "x", "A": "y", "P": "y", "S": "z", "I": "z"}
        if len(v) != 3 or any(c not in axes for c in v) or len({axes[c] for c in v}) != 3:
            raise ValueError(f"orientation must be a 3-letter axis code such as 'RAS' or 'LPS', got {v!r}")
        return v

    @model_validator(mode="after")
    def _shapes(self) -> Preprocessing:
        if len(self.spacing) not in (2, 3) or any(s <= 0 for s in self.spacing):
            raise ValueError(f"spacing must be 2 or 3 positive numbers (mm), got {self.spacing}")
        if len(self.patch_size) != len(self.spacing) or any(p <= 0 for p in self.patch_size):
            raise ValueError(f"patch_size {self.patch_size} must have one positive entry per spacing axis")
        if any(not 0 <= a < len(self.patch_size) for a in self.tta_axes) or len(set(self.tta_axes)) != len(
                self.tta_axes):
            raise ValueError(f"tta_axes {self.tta_axes} must be distinct spatial axes 0..{len(self.patch_size) - 1}")
        if self.recipe == "nnunet" and self.resampling is None:
            self.resampling = Resampling()
        return self

    def channel_schemes(self, n_channels: int) -> list[Normalization]:
        """The normalisation of each of ``n_channels`` input channels."""
        if self.channel_normalization is None:
            return [self.normalization] * n_channels
        if len(self.channel_normalization) != n_channels:
            raise BundleError(f"channel_normalization has {len(self.channel_normalization)} entries for "
                              f"{n_channels} input channels")
        return list(self.channel_normalization)


class Quantization(_Strict):
    """An int8 OpenVINO model of the same network, made by ``medpipe models quantize`` and
    accepted by its accuracy gate. ``weights_sha256`` ties it to the exact fp32 weights it
    was calibrated from: a bundle whose weights changed afterwards is refused."""

    format: Literal["openvino-int8"] = "openvino-int8"
    folder: str = "int8"
    patch_size: list[int]
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    agreement: float = Field(ge=0.0, le=1.0)  # worst validation volume: voxels whose argmax equals fp32's
    min_agreement: float = Field(ge=0.0, le=1.0)
    worst_class_dice: float = Field(ge=0.0, le=1.0)  # int8 vs fp32, structures of >= 1000 voxels
    min_class_dice: float = Field(ge=0.0, le=1.0)
    calibration: dict[str, Any] = Field(default_factory=dict)
    tools: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _gate(self) -> Quantization:
        if self.agreement < self.min_agreement:
            raise ValueError(f"the int8 model agrees with fp32 on {self.agreement:.2%} of voxels, below its own "
                             f"gate {self.min_agreement:.2%}")
        if self.worst_class_dice < self.min_class_dice:
            raise ValueError(f"the int8 model's worst structure Dice vs fp32 is {self.worst_class_dice:.3f}, below "
                             f"its own gate {self.min_class_dice:.2f}")
        if Path(self.folder).is_absolute() or ".." in Path(self.folder).parts:
            raise ValueError(f"folder must be a relative path inside the bundle, got {self.folder!r}")
        return self


class Regions(_Strict):
    """Region-based outputs (nnU-Net region training, e.g. BraTS): output channel ``i`` is a
    sigmoid region over the labels ``labels[i]``; voxels above 0.5 are painted
    ``class_order[i]``, regions in order (later ones win)."""

    labels: list[list[int]] = Field(min_length=1)
    class_order: list[int] = Field(min_length=1)

    @model_validator(mode="after")
    def _same_length(self) -> Regions:
        if len(self.labels) != len(self.class_order):
            raise ValueError(f"regions has {len(self.labels)} label lists but {len(self.class_order)} class_order "
                             "entries")
        return self


class Cascade(_Strict):
    """The second stage of an nnU-Net cascade (``3d_cascade_fullres``): the bundle in
    ``previous`` (a folder inside this one, the ``3d_lowres`` model) runs first, and the
    one-hot of its ``one_hot_labels`` joins the image channels as network input."""

    previous: str = "previous_stage"
    one_hot_labels: list[int] = Field(min_length=1)

    @field_validator("previous")
    @classmethod
    def _inside(cls, v: str) -> str:
        if Path(v).is_absolute() or ".." in Path(v).parts:
            raise ValueError(f"previous must be a folder inside the bundle, got {v!r}")
        return v


class BundleConfig(_Strict):
    """The contents of ``model.yaml``.

    ``ensemble`` lists further weight files of the same architecture (nnU-Net folds): the
    prediction averages the logits of ``weights.safetensors`` and each of them."""

    name: str = Field(min_length=1)
    version: str = "1.0"
    description: str = ""
    architecture: str
    arch_config: dict[str, Any]
    modality: Literal["CT", "MR"]
    channels: list[str] = Field(min_length=1)
    # segmentation bundles name every output class; registration bundles output a velocity
    # field (arch_config.num_classes = 3 components) and carry their settings in `registration`;
    # recon bundles (k-space in, image out) carry a `recon` block instead of labels/preprocessing
    task: Literal["segmentation", "registration", "recon"] = "segmentation"
    labels: dict[int, LabelInfo] = Field(default_factory=dict)
    preprocessing: Preprocessing | None = None
    recon: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    quantization: Quantization | None = None
    registration: dict[str, Any] | None = None  # validated by medpipe.registration.bundle
    regions: Regions | None = None
    ensemble: list[str] = Field(default_factory=list)
    cascade: Cascade | None = None

    @field_validator("ensemble")
    @classmethod
    def _inside(cls, v: list[str]) -> list[str]:
        for name in v:
            if Path(name).is_absolute() or ".." in Path(name).parts or not name.endswith(".safetensors"):
                raise ValueError(f"ensemble entries must be .safetensors files inside the bundle, got {name!r}")
        if len(set(v)) != len(v) or WEIGHTS_FILE in v:
            raise ValueError("ensemble entries must be distinct and other than weights.safetensors")
        return v

    @field_validator("architecture")
    @classmethod
    def _known(cls, v: str) -> str:
        from medpipe.models import is_model, list_models, normalize_name

        if not is_model(v):
            raise ValueError(f"unknown architecture {v!r}; known: {', '.join(list_models())}")
        return normalize_name(v)

    @model_validator(mode="after")
    def _consistent(self) -> BundleConfig:
        from medpipe.models import model_task

        if model_task(self.architecture) != self.task:
            raise ValueError(f"architecture {self.architecture} is a {model_task(self.architecture)} model but the "
                             f"bundle's task is {self.task!r}")
        if self.task == "recon":
            if self.recon is None:
                raise ValueError("a recon bundle needs a 'recon' block (coils, accelerations, coil maps)")
            return self
        if self.preprocessing is None:
            raise ValueError("a segmentation bundle needs a 'preprocessing' block")
        for key in ("in_channels", "num_classes"):
            if not isinstance(self.arch_config.get(key), int):
                raise ValueError(f"arch_config.{key} must be an integer")
        extra = len(self.cascade.one_hot_labels) if self.cascade is not None else 0
        if self.arch_config["in_channels"] != len(self.channels) + extra:
            raise ValueError(f"arch_config.in_channels is {self.arch_config['in_channels']} "
                             f"but {len(self.channels)} channels are named {self.channels}"
                             + (f" plus {extra} one-hot channels of the cascade's first stage" if extra else ""))
        k = self.arch_config["num_classes"]
        if self.task == "registration":
            if k != len(self.preprocessing.spacing):
                raise ValueError(f"a registration bundle's arch_config.num_classes is the number of velocity "
                                 f"components ({len(self.preprocessing.spacing)}), got {k}")
            if self.registration is None:
                raise ValueError("a registration bundle needs a 'registration' block")
            return self
        if self.registration is not None:
            raise ValueError("'registration' settings belong to bundles with task: registration")
        if self.regions is not None:
            if len(self.regions.class_order) != k:
                raise ValueError(f"regions lists {len(self.regions.class_order)} regions but arch_config.num_classes "
                                 f"is {k}")
            want = sorted({0, *self.regions.class_order})
            if sorted(self.labels) != want:
                raise ValueError(f"labels must name the painted values {want} (0 = background), got {sorted(self.labels)}")
        elif sorted(self.labels) != list(range(k)):
            raise ValueError(f"labels must be 0..{k - 1} (0 = background) to match arch_config.num_classes={k}, "
                             f"got {sorted(self.labels)}")
        if self.quantization is not None and self.ensemble:
            raise ValueError("an int8 model quantises one set of weights; a bundle with an ensemble cannot have one")
        return self

    @property
    def num_classes(self) -> int:
        return int(self.arch_config["num_classes"])

    @property
    def label_names(self) -> dict[int, str]:
        return {i: lab.name for i, lab in self.labels.items()}


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes."""
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


_ALIASES_KEY = "aliases"


def _alias_rank(key: str) -> tuple[int, int, str]:
    """Which of several names of one tensor is stored: the plainest (no ``decoder.encoder.``
    or ``.all_modules.`` re-registration), then the shortest."""
    return (("decoder.encoder." in key) + (".all_modules." in key), len(key), key)


def deduplicate_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """One entry per distinct tensor, plus ``{alias: stored name}`` for the others.

    nnU-Net's networks register modules twice (a decoder holding the encoder, convs listed
    again in ``all_modules``), so their state dicts name the same tensor several times;
    safetensors refuses shared tensors, and storing them once keeps bundles small."""
    groups: dict[tuple[int, int, tuple[int, ...], tuple[int, ...], str], list[str]] = {}
    for key, value in state.items():
        ident = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape),
                 tuple(value.stride()), str(value.dtype))
        groups.setdefault(ident, []).append(key)
    unique, aliases = {}, {}
    for keys in groups.values():
        keep = min(keys, key=_alias_rank)
        unique[keep] = state[keep]
        aliases.update({k: keep for k in keys if k != keep})
    return unique, aliases


def expand_aliases(state: dict[str, Any], aliases: dict[str, str]) -> dict[str, Any]:
    """The state dict with every alias present again (values shared, nothing copied)."""
    out = dict(state)
    for alias, target in aliases.items():
        if target not in state:
            raise BundleError(f"weights alias {alias!r} points at {target!r}, which the file does not hold")
        out[alias] = state[target]
    return out


def _first_mismatch(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]) -> str | None:
    """One sentence describing the first tensor that differs (missing, unexpected, shape)."""
    for key, shape in expected.items():
        if key not in found:
            return f"tensor {key!r} {list(shape)} is missing"
        if tuple(found[key]) != tuple(shape):
            return f"tensor {key!r} has shape {list(found[key])}, the architecture needs {list(shape)}"
    for key in found:
        if key not in expected:
            return f"tensor {key!r} is not part of the architecture"
    return None


def _meta_shapes(config: BundleConfig) -> dict[str, tuple[int, ...]]:
    from medpipe.models import create_model

    try:
        with torch.device("meta"):
            model = create_model(config.architecture, **config.arch_config)
    except (TypeError, ValueError) as exc:
        raise BundleError(f"bundle {config.name!r}: arch_config does not build {config.architecture}: {exc}") from exc
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@dataclass(frozen=True)
class Bundle:
    """A validated bundle on disk."""

    path: Path
    config: BundleConfig

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS_FILE

    @property
    def int8_path(self) -> Path | None:
        """The int8 OpenVINO model (``.xml``) when the bundle has been quantised, else None."""
        q = self.config.quantization
        return self.path / q.folder / INT8_XML if q is not None else None

    @property
    def weight_files(self) -> list[Path]:
        """``weights.safetensors`` and the ensemble's further weight files, in order."""
        return [self.weights_path, *(self.path / name for name in self.config.ensemble)]

    def build_model(self, device: str | torch.device = "cpu", weights: Path | None = None) -> nn.Module:
        """The network with the bundle's weights (or ``weights``, one of ``weight_files``)
        loaded (strict), in eval mode, on ``device``."""
        from safetensors.torch import load_file

        from medpipe.models import create_model

        path = self.weights_path if weights is None else Path(weights)
        model = create_model(self.config.architecture, **self.config.arch_config)
        state = expand_aliases(load_file(str(path), device="cpu"), _weight_aliases(path))
        problem = _first_mismatch({k: tuple(v.shape) for k, v in model.state_dict().items()},
                                  {k: tuple(v.shape) for k, v in state.items()})
        if problem:
            raise BundleError(f"bundle {self.path}: {path.name} does not match {self.config.architecture}: {problem}")
        model.load_state_dict(state, strict=True)
        return model.to(device).eval()

    def build_models(self, device: str | torch.device = "cpu") -> list[nn.Module]:
        """One network per weight file (a single one for bundles without an ensemble)."""
        return [self.build_model(device, w) for w in self.weight_files]


def resolve_bundle_path(path: str | Path) -> Path:
    """A bundle folder as given, else relative to the medpipe package, else to the repository
    (``ct_organs_phantom`` names the shipped bundle from anywhere)."""
    import medpipe

    given = Path(path).expanduser()
    if given.is_absolute() or given.is_dir():
        return given
    package = Path(medpipe.__file__).resolve().parent
    for base in (package, package / "bundles", package.parent):
        if (base / given).is_dir():
            return base / given
    return given  # load_bundle names it in its "does not exist" error


def _read_config(path: Path) -> BundleConfig:
    cfg_path = path / CONFIG_FILE
    if not cfg_path.is_file():
        raise BundleError(f"bundle {path} has no {CONFIG_FILE}")
    try:
        raw = yaml.safe_load(cfg_path.read_text())
    except yaml.YAMLError as exc:
        raise BundleError(f"{cfg_path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(raw, dict):
        raise BundleError(f"{cfg_path} must hold a mapping of fields, not {type(raw).__name__}")
    return _validate(raw, str(cfg_path))


def _validate(raw: dict[str, Any], where: str) -> BundleConfig:
    try:
        return BundleConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        msg = re.sub(r"^(Value|Assertion) error, ", "", err["msg"])
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        # Cross-field checks have no location; their messages name the fields themselves.
        raise BundleError(f"{where}: field {field!r}: {msg}" if field else f"{where}: {msg}") from exc


def _weight_aliases(path: Path) -> dict[str, str]:
    """``{alias: stored name}`` from the safetensors metadata (empty for files without)."""
    import json

    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(_ALIASES_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{path} is not a readable safetensors file: {exc}") from exc
    try:
        aliases = json.loads(raw) if raw else {}
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: its '{_ALIASES_KEY}' metadata is not valid JSON") from exc
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise BundleError(f"{path}: its '{_ALIASES_KEY}' metadata must map tensor names to tensor names")
    return aliases


def _weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{path} is not a readable safetensors file: {exc}") from exc
    return expand_aliases(shapes, _weight_aliases(path))


def load_bundle(path: str | Path, *, expect_modality: str | None = None) -> Bundle:
    """Read and validate a bundle; raises ``BundleError`` with one sentence when anything is off."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"model bundle folder {path} does not exist")
    config = _read_config(path)
    if expect_modality is not None and expect_modality.upper() != config.modality:
        raise BundleError(f"bundle {config.name} is for {config.modality}, study is {expect_modality.upper()}")
    expected = _meta_shapes(config)
    for name in (WEIGHTS_FILE, *config.ensemble):
        weights = path / name
        if not weights.is_file():
            raise BundleError(f"bundle {path} has no {name}")
        problem = _first_mismatch(expected, _weight_shapes(weights))
        if problem:
            raise BundleError(f"bundle {path}: {name} does not match {config.architecture}: {problem}")
    if config.quantization is not None:
        _check_quantized(path, config.quantization)
    if config.cascade is not None:
        load_bundle(path / config.cascade.previous)  # the first stage must be a valid bundle too
    return Bundle(path=path, config=config)


_SHA256: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, memoised per process on (path, size, mtime): a pipeline loads the
    same bundle in several stages, and a multi-GB weights file should be read once."""
    import hashlib

    st = Path(path).stat()
    stamp = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if stamp not in _SHA256:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA256[stamp] = h.hexdigest()
    return _SHA256[stamp]


def _check_quantized(path: Path, q: Quantization) -> None:
    xml = path / q.folder / INT8_XML
    for f in (xml, xml.with_suffix(".bin")):
        if not f.is_file():
            raise BundleError(f"bundle {path}: model.yaml declares an int8 model but {f} is missing")
    if file_sha256(path / WEIGHTS_FILE) != q.weights_sha256:
        raise BundleError(f"bundle {path}: its int8 model was quantised from other weights than "
                          f"{WEIGHTS_FILE} holds now; quantise again (medpipe models quantize) or remove "
                          "the 'quantization' block and the int8 folder")


class _YamlDumper(yaml.SafeDumper):
    """Short scalar lists (spacing, colours) on one line: ``[1.5, 1.5, 3.0]``."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(v, (list, dict)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_YamlDumper.add_representer(list, _represent_list)


def write_config(folder: Path, config: BundleConfig) -> None:
    """``model.yaml`` for ``config`` in ``folder`` (integer label ids, short lists on one line)."""
    doc = config.model_dump(mode="json", exclude_none=True)
    doc["labels"] = {int(k): v for k, v in doc["labels"].items()}  # YAML keeps integer label ids
    (folder / CONFIG_FILE).write_text(yaml.dump(doc, Dumper=_YamlDumper, sort_keys=False))


def _weights_to_save(model: nn.Module | dict[str, torch.Tensor], config: BundleConfig, path: Path,
                     expected: dict[str, tuple[int, ...]]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    full = clean_state_dict(model.state_dict() if isinstance(model, nn.Module) else dict(model))
    problem = _first_mismatch(expected, {k: tuple(v.shape) for k, v in full.items()})
    if problem:
        raise BundleError(f"cannot save bundle {path}: model does not match {config.architecture}: {problem}")
    unique, aliases = deduplicate_state(full)
    return {k: v.detach().to("cpu").contiguous() for k, v in unique.items()}, aliases


def save_bundle(path: str | Path, model: nn.Module | dict[str, torch.Tensor], config: BundleConfig | dict[str, Any], *,
                overwrite: bool = False, ensemble: Sequence[nn.Module | dict[str, torch.Tensor]] = (),
                extra_files: dict[str, Path] | None = None) -> Bundle:
    """Write ``model``'s weights (a module or a state dict) and ``config`` as a bundle,
    atomically; returns it loaded. ``ensemble`` holds the further members (nnU-Net folds),
    one per name in ``config.ensemble``; ``extra_files`` (bundle-relative name -> source
    file) are copied in inside the same atomic write (a registration bundle's atlas)."""
    import json

    from safetensors.torch import save_file

    path = Path(path)
    if not isinstance(config, BundleConfig):
        config = _validate(dict(config), f"bundle config for {path}")
    if len(ensemble) != len(config.ensemble):
        raise BundleError(f"cannot save bundle {path}: config.ensemble names {len(config.ensemble)} weight files "
                          f"but {len(ensemble)} ensemble members were given")
    if config.quantization is not None:
        raise BundleError(f"cannot save bundle {path} with a 'quantization' block: new weights invalidate the "
                          "int8 model; save without it and run medpipe models quantize")
    expected = _meta_shapes(config)
    members = [(WEIGHTS_FILE, _weights_to_save(model, config, path, expected))]
    members += [(name, _weights_to_save(m, config, path, expected)) for name, m in zip(config.ensemble, ensemble,
                                                                                         strict=True)]
    size_mb = sum(v.numel() * v.element_size() for _, (state, _) in members for v in state.values()) / 1e6
    if size_mb > MAX_SHIPPED_WEIGHTS_MB:
        warnings.warn(f"bundle {path}: weights are {size_mb:.1f} MB, above the {MAX_SHIPPED_WEIGHTS_MB:.0f} MB "
                      "limit for bundles shipped with medpipe", stacklevel=2)
    with atomic_dir(path, overwrite=overwrite) as tmp:
        write_config(tmp, config)
        for name, (state, aliases) in members:
            metadata = {"name": config.name, "version": config.version, "architecture": config.architecture}
            if aliases:
                metadata[_ALIASES_KEY] = json.dumps(aliases, sort_keys=True)
            save_file(state, str(tmp / name), metadata=metadata)
        for rel, src in (extra_files or {}).items():
            dst = tmp / rel
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise BundleError(f"cannot save bundle {path}: extra file name {rel!r} must stay inside the bundle")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    return load_bundle(path)
