"""Training settings (pydantic, unknown keys refused): nnU-Net's defaults unless told."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medpipe.errors import InputError

__all__ = ["TrainConfig", "load_train_config"]


class TrainConfig(BaseModel):
    """Everything ``train`` needs besides the dataset and output paths."""

    model_config = ConfigDict(extra="forbid")

    model: str = "stunet_xs"
    epochs: int = Field(50, ge=1)
    iters_per_epoch: int = Field(50, ge=1)
    batch_size: int = Field(2, ge=1)
    patch_size: list[int] | None = None
    spacing: list[float] | None = None
    max_patch_voxels: int = Field(64**3, ge=8**3)
    fold: int = Field(0, ge=-1)
    n_folds: int = Field(5, ge=2)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float | None = Field(None, gt=0)
    weight_decay: float = Field(3e-5, ge=0)
    momentum: float = Field(0.99, ge=0, lt=1)
    poly_exponent: float = 0.9
    grad_clip: float = 12.0
    val_every: int = Field(5, ge=1)
    checkpoint_every: int = Field(5, ge=1)
    seed: int = 0
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    augment: bool = True
    elastic: bool = False
    mirror_axes: list[int] | None = None  # None: all, minus left-right for sided labels
    fg_fraction: float = Field(1 / 3, ge=0, le=1)
    val_tta: bool = False
    nsd_tolerance_mm: float = Field(2.0, ge=0)
    threads: int | None = Field(None, ge=1)
    # 2D networks: which planes of 3D volumes are the training images (None: truly 2D data)
    slices: Literal["axial", "coronal", "sagittal"] | None = None
    loss_weights: tuple[float, float] | None = None  # (CE, Dice); default 1, 1 (3D) / 0.5, 0.5 (2D papers)
    nesterov: bool = True
    init_weights: str | None = None  # pretrained weights file (e.g. an ImageNet ResNet-34), never downloaded
    name: str | None = None
    description: str = ""
    version: str = "1.0"

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-2 if self.optimizer == "sgd" else 1e-3)


def load_train_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A YAML file's ``training:`` section (or the whole file) plus CLI overrides."""
    doc: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise InputError(f"training config {path} could not be read: {exc}") from exc
        doc = dict(raw.get("training", raw)) if isinstance(raw, dict) else {}
    doc.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return TrainConfig(**doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise InputError(f"training config{' ' + str(path) if path else ''}: {where}: {err['msg']}") from exc
