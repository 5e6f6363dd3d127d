"""Train a registration network (MICDIR or the VoxelMorph baseline) and ship it as a bundle.

Data: a folder of 3D images of one modality (``*.nii.gz``; optional ``labels/<same name>``
for evaluation). Every image is affinely pre-aligned to the reference (the ``atlas`` image,
else the first) and put on the reference's working grid once. Each iteration draws a pair:
with probability ``synthetic_fraction`` two random diffeomorphic warps of one image (the
atlas itself stays unwarped half the time), else two different images; both get
independent same-modality intensity changes, and one random ``crop`` is cut from both. The
loss is MICDIR's (symmetric local NCC, diffusion, graph, half-resolution terms, cycle
consistency), plus, when ``weights.supervised`` > 0, the endpoint error against the known
field of a synthetic pair (both directions). Validation every epoch: fixed synthetic pairs
with known warps — Dice of the labels warped by the prediction against the labels warped by
the truth, % folding, endpoint error (mm). ``checkpoint_latest.pt`` (weights, optimiser, RNG, log) every epoch; ``resume``
continues from it. The bundle gets the weights, the working-grid settings, the log, the
learning curve, the validation report and, in atlas mode, the atlas image and labels.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from medpipe.errors import InputError
from medpipe.image import Image
from medpipe.registration import spatial
from medpipe.registration.losses import LossWeights, pair_losses

__all__ = ["RegTrainConfig", "RegTrainResult", "train_registration", "CHECKPOINT"]

CHECKPOINT = "checkpoint_latest.pt"
TRAINING_AFFINE_SAMPLING = 0.15  # the training images' atlas alignment (the shipped bundle's recipe)
LOSS_TERMS = ("ncc", "smooth", "graph", "cycle", "supervised")  # averaged per epoch into the log
LOG_FIELDS = ["epoch", "iterations", "loss", *LOSS_TERMS, "val_dice", "val_folding_pct", "val_epe_mm",
              "lr", "epoch_seconds", "train_seconds_total"]


class RegTrainConfig(BaseModel):
    """Settings of ``medpipe train-registration`` (also the ``training:`` part of a recipe)."""

    model_config = ConfigDict(extra="forbid")

    name: str = "registration"
    description: str = ""
    model: str = "micdir"
    arch: dict[str, Any] = Field(default_factory=dict)
    modality: str = "MR"
    atlas: str | None = None  # file name (in the folder) of the fixed atlas image
    spacing: float = Field(2.0, gt=0)
    grid: list[int] = Field(default_factory=lambda: [96, 96, 96])
    crop: list[int] = Field(default_factory=lambda: [64, 64, 64])
    epochs: int = Field(20, ge=1)
    iters_per_epoch: int = Field(40, ge=1)
    lr: float = Field(1e-3, gt=0)
    min_lr: float = Field(1e-5, ge=0)
    symmetric: bool = True
    weights: dict[str, float] = Field(default_factory=dict)  # LossWeights overrides
    synthetic_fraction: float = Field(0.7, ge=0, le=1)
    warp_amplitude: float = Field(2.0, ge=0)  # voxels
    # scale of the random affine in each training/validation warp (1 = ±4°, ±4 %, ±2 voxels). At
    # inference the affine pre-alignment has already removed the global part, so what the network
    # must learn is the non-linear residual plus a small affine error: 0.25 matches that.
    warp_affine: float = Field(1.0, ge=0)
    intensity_strength: float = Field(1.0, ge=0)
    val_pairs: int = Field(4, ge=1)
    refine_iterations: int = Field(0, ge=0)  # default instance optimisation stored in the bundle
    threads: int = Field(2, ge=1)
    time_budget_minutes: float | None = Field(None, gt=0)  # stop (and decay the lr) by wall time too
    seed: int = 0


@dataclass
class RegTrainResult:
    bundle: Path
    work_dir: Path
    log: list[dict[str, Any]]
    evaluation: dict[str, Any]
    seconds: float


@dataclass
class _Volume:
    name: str
    image: np.ndarray  # [0, 1] on the working grid
    labels: np.ndarray | None


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise InputError(f"training folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith((".nii.gz", ".nii", ".nrrd", ".mha")))
    if not files:
        raise InputError(f"training folder {folder} holds no images (*.nii.gz, *.nii, *.nrrd, *.mha)")
    return files


def _prepare(folder: Path, cfg: RegTrainConfig, progress) -> tuple[list[_Volume], Image, Image | None, dict]:
    from medpipe.io.volumes import read_volume
    from medpipe.registration.checks import check_volume
    from medpipe.registration.classic import affine_align
    from medpipe.registration.deep import to_working_grid, working_grid
    from medpipe.registration.field import sample_world

    files = _images(folder)
    names = [p.name for p in files]
    if cfg.atlas is not None and cfg.atlas not in names:
        raise InputError(f"atlas {cfg.atlas!r} is not one of the images in {folder} ({', '.join(names[:5])}...)")
    ref_idx = names.index(cfg.atlas) if cfg.atlas else 0
    order = [ref_idx] + [i for i in range(len(files)) if i != ref_idx]
    ref = check_volume(read_volume(files[ref_idx]), str(files[ref_idx]))
    aff, shape = working_grid(ref, cfg.spacing, tuple(cfg.grid))
    ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), axis=-1)
    pts = ijk @ aff[:3, :3].T + aff[:3, 3]
    vols, ref_labels = [], None
    for i in progress(order, description="preparing images"):
        img = ref if i == ref_idx else check_volume(read_volume(files[i]), str(files[i]))
        matrix = np.eye(4) if i == ref_idx else affine_align(ref, img, sampling=TRAINING_AFFINE_SAMPLING)
        lab_path = folder / "labels" / files[i].name
        labels = None
        if lab_path.is_file():
            lab_img = read_volume(lab_path, is_label=True)
            mapped = pts @ matrix[:3, :3].T + matrix[:3, 3]
            labels = np.rint(sample_world(lab_img.array[:1].astype(np.float32), lab_img.affine, mapped, order=0)[0]
                             ).astype(np.int16)
            if i == ref_idx:
                ref_labels = lab_img
        vols.append(_Volume(files[i].name, to_working_grid(img, aff, shape, matrix), labels))
    return vols, ref, ref_labels, {"affine": aff.tolist(), "shape": list(shape)}


def _warp_np(vol: np.ndarray, disp: torch.Tensor, labels: bool = False) -> torch.Tensor:
    t = torch.from_numpy(vol.astype(np.float32))[None, None]
    return spatial.warp(t, disp, mode="nearest" if labels else "bilinear")


def _crop_sample(vol: np.ndarray | torch.Tensor, disp: torch.Tensor | None, lo: list[int], crop: list[int]
                 ) -> torch.Tensor:
    """``vol`` (an image array, or a ``(1, C, ...)`` field) warped by ``disp`` (full-grid voxels),
    evaluated only on the crop: the rest of the grid is never interpolated."""
    t = torch.from_numpy(vol)[None, None] if isinstance(vol, np.ndarray) else vol
    sl = (slice(None), slice(None), *[slice(a, a + c) for a, c in zip(lo, crop, strict=True)])
    if disp is None:
        return t[sl].contiguous()
    coords = spatial.identity_grid(tuple(crop)) + torch.tensor(lo, dtype=torch.float32).view(1, 3, 1, 1, 1)
    return spatial._sample(t, coords + disp[sl], "bilinear", "border")


def _inverse(disp: torch.Tensor | None) -> torch.Tensor | None:
    """Inverse of a random training warp, at half resolution (the warps are smooth there; a
    full-grid fixed-point inversion costs ~1.4 s per 96³ field against ~0.2 s)."""
    if disp is None:
        return None
    shape = tuple(disp.shape[2:])
    half = tuple(max(8, n // 2) for n in shape)
    return spatial.resize_field(spatial.invert(spatial.resize_field(disp, half)), shape)


def _pair_truth(d_fixed: torch.Tensor | None, inv_moving: torch.Tensor | None, lo: list[int], crop: list[int]
                ) -> torch.Tensor:
    """The true fixed->moving pull-back on the crop when fixed = base(x + d_f), moving =
    base(x + d_m): ``x + d_f(x) = y + d_m(y)`` gives ``u(x) = d_f(x) + d_m⁻¹(x + d_f(x))``."""
    df = torch.zeros(1, 3, *crop) if d_fixed is None else _crop_sample(d_fixed, None, lo, crop)
    if inv_moving is None:
        return df
    return df + _crop_sample(inv_moving, d_fixed, lo, crop)


def _draw_pair(vols: list[_Volume], cfg: RegTrainConfig, rng: np.random.Generator, atlas_mode: bool,
               with_truth: bool = False):
    """(fixed crop, moving crop, truth): truth = the known (fixed->moving, moving->fixed) fields
    on the crop when both are warps of one image and ``with_truth``, else None."""
    from medpipe.data.deformations import augment_intensity, random_displacement

    shape = vols[0].image.shape
    crop = [min(c, n) for c, n in zip(cfg.crop, shape, strict=True)]
    lo = [int(rng.integers(0, n - c + 1)) for c, n in zip(crop, shape, strict=True)]

    def warp_or_none(keep_probability: float) -> torch.Tensor | None:
        if rng.random() < keep_probability:
            return None
        return random_displacement(shape, rng, amplitude=cfg.warp_amplitude * rng.uniform(0.3, 1.0),
                                   affine_strength=cfg.warp_affine)

    truth = None
    if len(vols) == 1 or rng.random() < cfg.synthetic_fraction:
        base = vols[0] if atlas_mode and rng.random() < 0.5 else vols[int(rng.integers(len(vols)))]
        d_f, d_m = warp_or_none(0.5 if atlas_mode and base is vols[0] else 0.0), warp_or_none(0.0)
        f = _crop_sample(base.image, d_f, lo, crop)
        m = _crop_sample(base.image, d_m, lo, crop)
        if with_truth:
            truth = (_pair_truth(d_f, _inverse(d_m), lo, crop), _pair_truth(d_m, _inverse(d_f), lo, crop))
    else:
        i, j = (int(k) for k in rng.choice(len(vols), size=2, replace=False))
        if atlas_mode and rng.random() < 0.5:
            i, j = 0, (j if j != 0 else i)
        f = _crop_sample(vols[i].image, warp_or_none(0.7), lo, crop)
        m = _crop_sample(vols[j].image, warp_or_none(0.7), lo, crop)
    s = cfg.intensity_strength
    f, m = augment_intensity(f, rng, s), augment_intensity(m, rng, s)
    if rng.random() < 0.5:
        f, m = m, f
        truth = truth[::-1] if truth is not None else None
    return f, m, truth


def _val_set(vols: list[_Volume], cfg: RegTrainConfig) -> list[dict[str, Any]]:
    """Fixed validation pairs: moving = warp of a labelled volume, fixed = the volume itself."""
    from medpipe.data.deformations import augment_intensity, random_displacement

    rng = np.random.default_rng([cfg.seed, 99])
    labelled = [v for v in vols if v.labels is not None] or vols
    out = []
    for k in range(cfg.val_pairs):
        v = labelled[k % len(labelled)]
        true = random_displacement(v.image.shape, rng, amplitude=cfg.warp_amplitude, affine_strength=cfg.warp_affine)
        # moving(x) = fixed(x + inv(true)(x)) so that the true fixed->moving pull-back is `true`
        inv = spatial.invert(true)
        fixed = torch.from_numpy(v.image)[None, None]
        moving = augment_intensity(_warp_np(v.image, inv), rng, cfg.intensity_strength)
        item = {"fixed": fixed, "moving": moving, "true": true}
        if v.labels is not None:
            item["labels"] = v.labels
        out.append(item)
    return out


@torch.no_grad()
def _validate(model, val: list[dict[str, Any]], spacing: float, steps: int) -> dict[str, float]:
    from medpipe.metrics import dice, folding_percent, jacobian_determinant_l2r

    model.eval()
    dices, folds, epes = [], [], []
    for item in val:
        disp = spatial.exp_field(model(torch.cat((item["fixed"], item["moving"]), 1)), steps)
        folds.append(folding_percent(jacobian_determinant_l2r(disp[0].numpy())))
        epes.append(float(((disp - item["true"]) ** 2).sum(1).sqrt().mean()) * spacing)
        if "labels" in item:
            lab = item["labels"]
            moved = _warp_np(lab, spatial.compose(disp, spatial.invert(item["true"])), labels=True)[0, 0].numpy()
            vals = [dice(moved == c, lab == c) for c in np.unique(lab) if c != 0]
            dices.append(float(np.nanmean(vals)) if vals else float("nan"))
    model.train()
    return {"val_dice": float(np.nanmean(dices)) if dices else float("nan"),
            "val_folding_pct": float(np.mean(folds)), "val_epe_mm": float(np.mean(epes))}


def _write_log(rows: list[dict[str, Any]], path: Path) -> None:
    from medpipe.io.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in LOG_FIELDS})


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medpipe.io.atomic import atomic_path

    ep = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    axes[0].plot(ep, [r["loss"] for r in rows])
    axes[0].set_title("training loss")
    axes[1].plot(ep, [r["val_dice"] for r in rows], "o-", color="tab:orange")
    axes[1].set_title("validation Dice (synthetic warps)")
    axes[2].plot(ep, [r["val_folding_pct"] for r in rows], "o-", color="tab:red")
    axes[2].set_title("validation folding %")
    for ax in axes:
        ax.set_xlabel("epoch")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def _lr(cfg: RegTrainConfig, progress: float) -> float:
    """Cosine decay from ``lr`` to ``min_lr`` over the run's progress (0..1)."""
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


def train_registration(folder: str | Path, out: str | Path, cfg: RegTrainConfig, *, work_dir: str | Path | None = None,
                       resume: bool = False, overwrite: bool = False, progress: bool = True) -> RegTrainResult:
    """Prepare the images, train, validate every epoch, checkpoint, and save the bundle."""
    from medpipe.io.atomic import check_writable
    from medpipe.models import create_model
    from medpipe.registration.bundle import save_registration_bundle

    folder, out = Path(folder), Path(out)
    check_writable(out, overwrite)
    work = Path(work_dir) if work_dir else Path(f"{out}.work")
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    track = _tracker(progress)
    t_start = time.perf_counter()
    vols, ref, ref_labels, grid = _prepare(folder, cfg, track)
    weights = LossWeights(**cfg.weights)
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, in_channels=2, num_classes=3, **cfg.arch)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed)
    log: list[dict[str, Any]] = []
    start_epoch = 0
    ckpt = work / CHECKPOINT
    if resume and ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        log, start_epoch = state["log"], state["epoch"]
    val = _val_set(vols, cfg)
    total = cfg.epochs * cfg.iters_per_epoch
    budget = cfg.time_budget_minutes * 60.0 if cfg.time_budget_minutes else None
    spent = float(log[-1].get("train_seconds_total", 0.0)) if log else 0.0
    model.train()
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        n = 0
        for it in track(range(cfg.iters_per_epoch), description=f"epoch {epoch + 1}/{cfg.epochs}"):
            elapsed = spent + time.perf_counter() - t0
            progress_frac = max((epoch * cfg.iters_per_epoch + it) / total, elapsed / budget if budget else 0.0)
            if progress_frac >= 1.0 and n > 0:
                break
            lr = _lr(cfg, progress_frac)
            for g in opt.param_groups:
                g["lr"] = lr
            f, m, truth = _draw_pair(vols, cfg, rng, cfg.atlas is not None, with_truth=weights.supervised > 0)
            terms = pair_losses(model, f, m, weights, symmetric=cfg.symmetric, truth=truth)
            opt.zero_grad()
            terms["total"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            n += 1
            for k in ("total", *LOSS_TERMS):
                if k in terms:
                    sums[k] = sums.get(k, 0.0) + float(terms[k].detach())
        row = {"epoch": epoch + 1, "iterations": n, "loss": round(sums["total"] / n, 5), "lr": lr,
               **{k: round(sums[k] / n, 5) for k in LOSS_TERMS if k in sums}}
        row.update({k: round(v, 4) for k, v in _validate(model, val, cfg.spacing, weights.steps).items()})
        row["epoch_seconds"] = round(time.perf_counter() - t0, 1)
        spent += row["epoch_seconds"]
        row["train_seconds_total"] = round(spent, 1)
        log.append(row)
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(), "log": log, "epoch": epoch + 1}, work / (CHECKPOINT + ".tmp"))
        (work / (CHECKPOINT + ".tmp")).replace(ckpt)
        _write_log(log, work / "training_log.csv")
        _plot(log, work / "learning_curve.png")
        if progress:
            print(f"epoch {epoch + 1}: " + ", ".join(f"{k} {v}" for k, v in row.items() if k != "epoch"), flush=True)
        if budget and spent >= budget:
            break
    seconds = time.perf_counter() - t_start
    evaluation = {"validation": "synthetic warps of the training images (known truth)", **log[-1],
                  "train_seconds": round(seconds, 1), "threads": cfg.threads}
    regions = None
    if cfg.atlas and cfg.atlas.startswith("mni152"):  # an MNI brain: ship its lobar territories too
        from medpipe.data.brains import brain_lobes

        regions = brain_lobes(ref)
    bundle = save_registration_bundle(out, model, cfg, grid, evaluation, work, atlas=(ref, ref_labels, regions)
                                      if cfg.atlas else None, overwrite=overwrite)
    return RegTrainResult(bundle, work, log, evaluation, seconds)


def _tracker(enabled: bool):
    def plain(it, total=None, description=""):
        return it

    if not enabled:
        return plain

    def rich_track(it, total=None, description=""):
        from rich.progress import track

        return track(it, description=description, transient=True)

    return rich_track
