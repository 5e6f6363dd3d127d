"""Train a RIM/CIRIM on folders of fully sampled multi-coil k-space and ship it as a bundle.

The segmentation trainer's conventions, for reconstruction: a fixed number of iterations,
validation every ``val_every`` (SSIM/PSNR/NMSE at every training acceleration on full slices
with fixed masks), ``checkpoint_latest.pt`` (model, optimiser, iteration, RNG states, log) so
``resume`` continues, ``training_log.csv`` and ``learning_curve.png``, and a bundle with the
held-out evaluation.

Each training sample is drawn fresh: a random slice of a random file, a mask of a random kind
and acceleration (fastMRI centre fractions), coil maps estimated from that mask's ACS lines
(what inference does), then a random window of ``crop_rows`` readout rows. Cropping along the
fully sampled readout is exact physics: the data are inverse-transformed along the rows,
cropped and transformed back, which is the k-space of the cropped coil images, while every
phase-encoding column (where the aliasing lives) is kept. That cuts the cost of a step by
``rows / crop_rows`` without changing the problem the network learns.
"""

from __future__ import annotations

import csv
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from medpipe.errors import InputError
from medpipe.io.kspace import pixel_size_mm

__all__ = ["ReconTrainConfig", "KSpaceSlices", "train_recon", "evaluate_recon_model", "CHECKPOINT"]

CHECKPOINT = "checkpoint_latest.pt"
LOG_FILE = "training_log.csv"
CURVE_FILE = "learning_curve.png"


class ReconTrainConfig(BaseModel):
    """Recon training settings (CLI options and ``configs/*.yaml`` map onto these)."""

    model_config = ConfigDict(extra="forbid")

    model: str = "cirim"
    arch: dict[str, Any] = Field(default_factory=lambda: {"hidden": 16, "cascades": 5, "steps": 3})
    iterations: int = Field(3000, ge=1)
    batch_size: int = Field(2, ge=1)
    lr: float = Field(2e-3, gt=0)
    lr_min: float = Field(1e-5, ge=0)
    warmup: int = Field(100, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    crop_rows: int = Field(64, ge=0)  # 0 = full slices
    accelerations: list[float] = Field(default_factory=lambda: [4.0, 8.0])
    mask_kinds: list[str] = Field(default_factory=lambda: ["equispaced", "random"])
    l1_weight: float = Field(0.1, ge=0)
    ssim_weight: float = Field(0.9, ge=0)
    val_every: int = Field(250, ge=1)
    val_slices: int = Field(6, ge=1)
    threads: int = Field(2, ge=0)
    seed: int = 0
    max_minutes: float | None = Field(None, gt=0)
    name: str = ""
    description: str = ""
    version: str = "1.0"


class KSpaceSlices:
    """Every slice of every fully sampled k-space file in a folder, read lazily from HDF5."""

    def __init__(self, folder: str | Path) -> None:
        import h5py

        self.folder = Path(folder)
        files = sorted(self.folder.glob("*.h5"))
        if not files:
            raise InputError(f"{self.folder} holds no k-space files (*.h5); write some with medpipe data kspace")
        self.files, self.items, coils, matrix, pixels = [], [], set(), set(), []
        for p in files:
            try:
                h = h5py.File(p, "r")
            except OSError:
                raise InputError(f"{p} is not an HDF5 file; k-space must be fastMRI, ISMRMRD or medpipe HDF5") from None
            ds = h.get("kspace")
            if ds is None or ds.ndim != 4 or not np.issubdtype(ds.dtype, np.complexfloating):
                raise InputError(f"{p}: training reads fastMRI/medpipe files with a complex 'kspace' dataset "
                                 "(slices, coils, rows, cols)")
            if "mask" in h and not np.asarray(h["mask"]).all():
                raise InputError(f"{p} is undersampled; training needs fully sampled k-space (masks are drawn per "
                                 "sample)")
            if "affine" in h.attrs:  # medpipe files: the image grid's pixel size, for the recon stage's check
                pixels.append(pixel_size_mm(h.attrs["affine"]))
            coils.add(int(ds.shape[1]))
            matrix.add(tuple(int(v) for v in ds.shape[2:]))
            ref = np.asarray(h["reconstruction_rss"], np.float32) if "reconstruction_rss" in h else None
            self.files.append((p, h, ref))
            self.items += [(len(self.files) - 1, s) for s in range(int(ds.shape[0]))]
        if len(coils) != 1 or len(matrix) != 1:
            raise InputError(f"{self.folder}: files differ in coil count {sorted(coils)} or matrix {sorted(matrix)}; "
                             "one training set needs one coil count and matrix")
        self.coils, self.matrix = coils.pop(), matrix.pop()
        # (column, row) mm, the median over the files that state it; None when none does (fastMRI)
        self.pixel_mm = [round(float(v), 3) for v in np.median(pixels, axis=0)] if pixels else None

    def __len__(self) -> int:
        return len(self.items)

    def slice(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(k-space (coils, rows, cols) complex64, reference (rows, cols) float32) of item ``i``."""
        f, s = self.items[i]
        _, h, ref = self.files[f]
        k = np.asarray(h["kspace"][s], np.complex64)
        if not np.isfinite(k).all():
            raise InputError(f"{self.files[f][0]}: slice {s} of the k-space holds NaN or infinite values")
        if ref is None:
            from medpipe.recon.fft import ifft2c
            from medpipe.recon.sense import rss

            return k, rss(ifft2c(k), 0).astype(np.float32)
        return k, ref[s]

    def name(self, i: int) -> str:
        f, s = self.items[i]
        return f"{self.files[f][0].stem}:{s}"


def _sample(bank: KSpaceSlices, cfg: ReconTrainConfig, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    from medpipe.recon.coilmaps import acs_maps
    from medpipe.recon.fft import fft1c, ifft1c
    from medpipe.recon.masks import make_mask

    k, ref = bank.slice(int(rng.integers(len(bank))))
    rows, cols = k.shape[1:]
    kind = str(rng.choice(cfg.mask_kinds))
    acc = float(rng.choice(cfg.accelerations))
    mask = make_mask(kind, (rows, cols), acc, seed=int(rng.integers(2**31)))
    y = k * mask
    maps = acs_maps(y, mask)
    crop = cfg.crop_rows if 0 < cfg.crop_rows < rows else rows
    if crop < rows:
        energy = ref.sum(1) + 1e-6 * ref.sum()
        centre = np.convolve(energy, np.ones(crop), "valid")
        r0 = int(rng.choice(len(centre), p=centre / centre.sum()))
        y = fft1c(ifft1c(y, dim=-2)[:, r0:r0 + crop], dim=-2)
        maps, ref = maps[:, r0:r0 + crop], ref[r0:r0 + crop]
    if mask.shape[0] > 1:
        mask = mask[:crop]
    return y.astype(np.complex64), mask, maps, ref.astype(np.float32)


def _batch(bank: KSpaceSlices, cfg: ReconTrainConfig, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
    parts = [_sample(bank, cfg, rng) for _ in range(cfg.batch_size)]
    y, m, s, r = (torch.from_numpy(np.ascontiguousarray(np.stack(p))) for p in zip(*parts, strict=True))
    return y, m.unsqueeze(1), s, r


def _lr(cfg: ReconTrainConfig, it: int, seconds: float = 0.0) -> float:
    """Linear warm-up, then cosine decay over the iterations -- or over ``max_minutes`` when that
    runs out first, so a time-boxed run on a busy machine still ends at the low rate."""
    if it < cfg.warmup:
        return cfg.lr * (it + 1) / cfg.warmup
    t = (it - cfg.warmup) / max(1, cfg.iterations - cfg.warmup)
    if cfg.max_minutes:
        t = max(t, seconds / (60 * cfg.max_minutes))
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * min(1.0, t)))


def evaluate_recon_model(model: torch.nn.Module, bank: KSpaceSlices, accelerations: list[float],
                         kinds: list[str], slices: list[int] | None = None, seed: int = 1234) -> dict[str, Any]:
    """SSIM/PSNR/NMSE per (mask kind, acceleration) on full slices with fixed, seeded masks.

    Slices of one file form one volume (fastMRI: data range = the volume maximum)."""
    from medpipe.metrics import nmse, psnr, ssim
    from medpipe.recon.coilmaps import acs_maps
    from medpipe.recon.masks import make_mask

    idx = list(range(len(bank))) if slices is None else slices
    out: dict[str, Any] = {}
    model.eval()
    for kind in kinds:
        for acc in accelerations:
            by_file: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {}
            for i in idx:
                k, ref = bank.slice(i)
                mask = make_mask(kind, k.shape[1:], acc, seed=seed + i)
                y = k * mask
                maps = acs_maps(y, mask)
                with torch.no_grad():
                    x = model(torch.from_numpy(y)[None], torch.from_numpy(mask)[None, None],
                              torch.from_numpy(maps)[None])[0].abs().numpy()
                g, p = by_file.setdefault(bank.items[i][0], ([], []))
                g.append(ref)
                p.append(x)
            vols = [(np.stack(g), np.stack(p)) for g, p in by_file.values()]
            out[f"{kind}_{acc:g}x"] = {"ssim": float(np.mean([ssim(g, p) for g, p in vols])),
                                       "psnr": float(np.mean([psnr(g, p) for g, p in vols])),
                                       "nmse": float(np.mean([nmse(g, p) for g, p in vols])),
                                       "slices": len(idx)}
    model.train()
    return out


def _write_log(rows: list[dict[str, Any]], path: Path) -> None:
    from medpipe.io.atomic import atomic_path

    fields = sorted({k for r in rows for k in r}, key=lambda k: (k != "iteration", k))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in fields})


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medpipe.io.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(7, 4))
    tr = [(r["iteration"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
    if tr:
        ax.plot(*zip(*tr, strict=True), color="tab:blue", label="train loss (0.1 L1 + 0.9 (1-SSIM))")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax2 = ax.twinx()
    keys = sorted({k for r in rows for k in r if k.startswith("val_ssim_")})
    for key in keys:
        pts = [(r["iteration"], r[key]) for r in rows if r.get(key) is not None]
        ax2.plot(*zip(*pts, strict=True), "o-", label=key.replace("val_ssim_", "val SSIM "))
    ax2.set_ylabel("validation SSIM")
    fig.legend(loc="upper center", ncol=2, fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


@dataclass
class ReconTrainResult:
    bundle: Path | None
    work_dir: Path
    log: list[dict[str, Any]]
    evaluation: dict[str, Any] | None
    seconds: float
    iterations: int


def _val_row(model, val: KSpaceSlices | None, cfg: ReconTrainConfig) -> dict[str, Any]:
    if val is None:
        return {}
    pick = np.linspace(0, len(val) - 1, min(cfg.val_slices, len(val))).round().astype(int).tolist()
    res = evaluate_recon_model(model, val, cfg.accelerations, ["equispaced"], pick)
    row = {}
    for key, v in res.items():
        tag = key.split("_", 1)[1]
        row[f"val_ssim_{tag}"] = round(v["ssim"], 5)
        row[f"val_psnr_{tag}"] = round(v["psnr"], 3)
        row[f"val_nmse_{tag}"] = round(v["nmse"], 5)
    return row


def train_recon(train_dir: str | Path, bundle: str | Path | None, cfg: ReconTrainConfig, *,
                val_dir: str | Path | None = None, test_dir: str | Path | None = None,
                work_dir: str | Path | None = None, resume: bool = False, overwrite: bool = False,
                progress: bool = True) -> ReconTrainResult:
    """Train, validate, evaluate on ``test_dir`` (held out) and write the bundle."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from medpipe.io.atomic import atomic_path, check_writable
    from medpipe.models import create_model, model_task
    from medpipe.training.recon_loss import estimate_loss

    if model_task(cfg.model) != "recon":
        raise InputError(f"{cfg.model} is not a reconstruction model; choose rim, rim_mgu, rim_indrnn, cirim or cirim_8")
    if bundle is not None:
        check_writable(Path(bundle), overwrite)
    work = Path(work_dir) if work_dir else Path(f"{bundle}.work") if bundle else None
    if work is None:
        raise InputError("train-recon needs a bundle path or a work_dir for its checkpoints")
    ckpt = work / CHECKPOINT
    if resume and not ckpt.exists():
        raise InputError(f"--resume: no {CHECKPOINT} in {work}")
    if not resume and ckpt.exists() and not overwrite:
        raise InputError(f"{work} already holds a training run ({CHECKPOINT}); pass --resume to continue it or "
                         "--overwrite to start again")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    train = KSpaceSlices(train_dir)
    val = KSpaceSlices(val_dir) if val_dir else None
    if val is not None and (val.coils, val.matrix) != (train.coils, train.matrix):
        raise InputError(f"validation data ({val.coils} coils, {val.matrix}) differ from training data "
                         f"({train.coils} coils, {train.matrix})")
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, **cfg.arch)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed)
    log: list[dict[str, Any]] = []
    start, spent = 0, 0.0
    if resume:
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        if state["config"]["model"] != cfg.model or state["config"]["arch"] != cfg.arch:
            raise InputError(f"--resume: {ckpt} trained {state['config']['model']} {state['config']['arch']}, "
                             f"not {cfg.model} {cfg.arch}")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, log, spent = state["iteration"], state["log"], state["seconds"]
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])

    def save(it: int) -> None:
        with atomic_path(ckpt) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "iteration": it, "log": log,
                        "seconds": spent, "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                        "python_rng": random.getstate(), "config": cfg.model_dump()}, tmp)
        _write_log(log, work / LOG_FILE)
        _plot(log, work / CURVE_FILE)

    model.train()
    t_start = time.perf_counter() - spent
    losses: list[float] = []
    it = start
    cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeRemainingColumn()]
    with Progress(*cols, disable=not progress) as bar:
        task = bar.add_task(f"training {cfg.model}", total=cfg.iterations, completed=start, info="")
        while it < cfg.iterations:
            for g in opt.param_groups:
                g["lr"] = _lr(cfg, it, spent)
            y, m, s, ref = _batch(train, cfg, rng)
            est, scale = model.estimates(y, m, s)
            loss = estimate_loss(est, ref / scale, cfg.l1_weight, cfg.ssim_weight)
            if not torch.isfinite(loss):
                raise InputError(f"recon training diverged at iteration {it} (loss {loss.item()}); try a lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(float(loss.item()))
            it += 1
            spent = time.perf_counter() - t_start
            out_of_time = cfg.max_minutes is not None and spent > 60 * cfg.max_minutes
            bar.update(task, advance=1, info=f"loss {np.mean(losses[-50:]):.4f}")
            if it % cfg.val_every == 0 or it == cfg.iterations or out_of_time:
                row = {"iteration": it, "train_loss": round(float(np.mean(losses)), 5), "lr": _lr(cfg, it - 1, spent),
                       "seconds": round(spent, 1), **_val_row(model, val, cfg)}
                losses = []
                log.append(row)
                save(it)
                spent = time.perf_counter() - t_start
                if progress:
                    bar.console.print(" ".join(f"{k} {v}" for k, v in row.items()))
            if out_of_time:
                break
    evaluation = None
    if test_dir is not None:
        test = KSpaceSlices(test_dir)
        evaluation = evaluate_recon_model(model, test, cfg.accelerations, cfg.mask_kinds)
        (work / "evaluation.json").write_text(json.dumps(evaluation, indent=2))
    out = None
    if bundle is not None:
        out = _write_bundle(Path(bundle), model, cfg, train, test_dir, evaluation, log, spent, it, work, overwrite)
    return ReconTrainResult(out, work, log, evaluation, spent, it)


def _write_bundle(path: Path, model, cfg: ReconTrainConfig, train: KSpaceSlices, test_dir, evaluation, log,
                  seconds: float, iterations: int, work: Path, overwrite: bool) -> Path:
    import shutil

    from medpipe.io.atomic import atomic_dir
    from medpipe.models.bundle import BundleConfig, save_bundle

    sources = sorted({p.stem.rsplit("_", 1)[0] for p, _, _ in train.files})
    last = log[-1] if log else {}
    config = BundleConfig(
        name=cfg.name or path.name, version=cfg.version,
        description=cfg.description or f"{cfg.model} trained by medpipe train-recon on {train.folder.name}",
        architecture=cfg.model, arch_config=dict(cfg.arch), modality="MR", channels=["complex image"], task="recon",
        recon={"coils": train.coils, "matrix": list(train.matrix),
               **({"pixel_mm": train.pixel_mm} if train.pixel_mm else {}), "accelerations": list(cfg.accelerations),
               "mask_kinds": list(cfg.mask_kinds), "coil_maps": "acs"},
        training={"sources": sources, "slices": len(train), "iterations": iterations,
                  "planned_iterations": cfg.iterations, "batch_size": cfg.batch_size, "crop_rows": cfg.crop_rows,
                  "lr": cfg.lr, "loss": f"{cfg.l1_weight} L1 + {cfg.ssim_weight} (1 - SSIM), logspace weights",
                  "seed": cfg.seed, "seconds": round(seconds, 1), "threads": cfg.threads, "max_minutes": cfg.max_minutes,
                  "last_validation": {k: v for k, v in last.items() if k.startswith("val_")}},
        evaluation=None if evaluation is None else {"held_out": str(test_dir), "per_mask": evaluation},
    )
    with atomic_dir(path, overwrite=overwrite) as tmp:
        save_bundle(tmp, model, config, overwrite=True)
        for name in (LOG_FILE, CURVE_FILE, "evaluation.json"):
            if (work / name).exists():
                shutil.copy2(work / name, tmp / name)
    return path
