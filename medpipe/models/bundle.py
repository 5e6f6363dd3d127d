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
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from torch import nn

from medpipe.errors import BundleError
from medpipe.io.atomic import atomic_dir

__all__ = ["BundleConfig", "LabelInfo", "Normalization", "Preprocessing", "Quantization", "Bundle", "load_bundle",
           "save_bundle", "write_config", "file_sha256", "clean_state_dict", "CONFIG_FILE", "WEIGHTS_FILE",
           "INT8_XML", "MAX_SHIPPED_WEIGHTS_MB"]

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
    ``zscore`` = z-score with ``mean``/``std`` if given, else per image; ``none``."""

    scheme: Literal["ct", "zscore", "none"]
    clip: tuple[float, float] | None = None
    mean: float | None = None
    std: float | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Normalization:
        if self.scheme == "ct" and (self.clip is None or self.mean is None or self.std is None):
            raise ValueError("scheme 'ct' needs clip, mean and std (dataset foreground statistics)")
        if self.clip is not None and self.clip[0] >= self.clip[1]:
            raise ValueError(f"clip must be [low, high] with low < high, got {list(self.clip)}")
        if self.std is not None and self.std <= 0:
            raise ValueError(f"std must be positive, got {self.std}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")
        return self


class Preprocessing(_Strict):
    """What the model was trained on: orientation, voxel spacing (mm, along the oriented
    array axes i, j, k), normalisation, patch size, mirror axes for TTA."""

    orientation: str = "RAS"
    spacing: list[float]
    normalization: Normalization
    patch_size: list[int]
    tta_axes: list[int] = Field(default_factory=list)
    crop_foreground: bool = False

    @property
    def volume_spacing(self) -> list[float | None]:
        """Target spacing per volume axis; a 2D bundle's slice axis (K) keeps its own (None)."""
        return [*self.spacing, None] if len(self.spacing) == 2 else list(self.spacing)

    @field_validator("orientation")
    @classmethod
    def _orientation(cls, v: str) -> str:
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
        return self


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


class BundleConfig(_Strict):
    """The contents of ``model.yaml``."""

    name: str = Field(min_length=1)
    version: str = "1.0"
    description: str = ""
    architecture: str
    arch_config: dict[str, Any]
    modality: Literal["CT", "MR"]
    channels: list[str] = Field(min_length=1)
    labels: dict[int, LabelInfo]
    preprocessing: Preprocessing
    training: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    quantization: Quantization | None = None

    @field_validator("architecture")
    @classmethod
    def _known(cls, v: str) -> str:
        from medpipe.models import is_model, list_models, normalize_name

        if not is_model(v):
            raise ValueError(f"unknown architecture {v!r}; known: {', '.join(list_models())}")
        return normalize_name(v)

    @model_validator(mode="after")
    def _consistent(self) -> BundleConfig:
        for key in ("in_channels", "num_classes"):
            if not isinstance(self.arch_config.get(key), int):
                raise ValueError(f"arch_config.{key} must be an integer")
        if self.arch_config["in_channels"] != len(self.channels):
            raise ValueError(f"arch_config.in_channels is {self.arch_config['in_channels']} "
                             f"but {len(self.channels)} channels are named {self.channels}")
        k = self.arch_config["num_classes"]
        if sorted(self.labels) != list(range(k)):
            raise ValueError(f"labels must be 0..{k - 1} (0 = background) to match arch_config.num_classes={k}, "
                             f"got {sorted(self.labels)}")
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

    def build_model(self, device: str | torch.device = "cpu") -> nn.Module:
        """The network with the bundle's weights loaded (strict), in eval mode, on ``device``."""
        from safetensors.torch import load_file

        from medpipe.models import create_model

        model = create_model(self.config.architecture, **self.config.arch_config)
        state = load_file(str(self.weights_path), device="cpu")
        problem = _first_mismatch({k: tuple(v.shape) for k, v in model.state_dict().items()},
                                  {k: tuple(v.shape) for k, v in state.items()})
        if problem:
            raise BundleError(f"bundle {self.path}: weights do not match {self.config.architecture}: {problem}")
        model.load_state_dict(state, strict=True)
        return model.to(device).eval()


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


def _weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise BundleError(f"{path} is not a readable safetensors file: {exc}") from exc


def load_bundle(path: str | Path, *, expect_modality: str | None = None) -> Bundle:
    """Read and validate a bundle; raises ``BundleError`` with one sentence when anything is off."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"model bundle folder {path} does not exist")
    config = _read_config(path)
    if expect_modality is not None and expect_modality.upper() != config.modality:
        raise BundleError(f"bundle {config.name} is for {config.modality}, study is {expect_modality.upper()}")
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise BundleError(f"bundle {path} has no {WEIGHTS_FILE}")
    problem = _first_mismatch(_meta_shapes(config), _weight_shapes(weights))
    if problem:
        raise BundleError(f"bundle {path}: weights do not match {config.architecture}: {problem}")
    if config.quantization is not None:
        _check_quantized(path, config.quantization)
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


def save_bundle(path: str | Path, model: nn.Module, config: BundleConfig | dict[str, Any], *,
                overwrite: bool = False) -> Bundle:
    """Write ``model``'s weights and ``config`` as a bundle, atomically; returns it loaded."""
    from safetensors.torch import save_file

    path = Path(path)
    if not isinstance(config, BundleConfig):
        config = _validate(dict(config), f"bundle config for {path}")
    state = {k: v.detach().to("cpu").contiguous() for k, v in clean_state_dict(model.state_dict()).items()}
    problem = _first_mismatch(_meta_shapes(config), {k: tuple(v.shape) for k, v in state.items()})
    if problem:
        raise BundleError(f"cannot save bundle {path}: model does not match {config.architecture}: {problem}")
    size_mb = sum(v.numel() * v.element_size() for v in state.values()) / 1e6
    if size_mb > MAX_SHIPPED_WEIGHTS_MB:
        warnings.warn(f"bundle {path}: weights are {size_mb:.1f} MB, above the {MAX_SHIPPED_WEIGHTS_MB:.0f} MB "
                      "limit for bundles shipped with medpipe", stacklevel=2)
    if config.quantization is not None:
        raise BundleError(f"cannot save bundle {path} with a 'quantization' block: new weights invalidate the "
                          "int8 model; save without it and run medpipe models quantize")
    with atomic_dir(path, overwrite=overwrite) as tmp:
        write_config(tmp, config)
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"name": config.name, "version": config.version,
                                                           "architecture": config.architecture})
    return load_bundle(path)
