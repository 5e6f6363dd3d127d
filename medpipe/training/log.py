"""The training log: ``training_log.csv`` (one row per epoch) and ``learning_curve.png``."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from medpipe.io.atomic import atomic_path

__all__ = ["LOG_FIELDS", "write_log", "plot_learning_curve"]

LOG_FIELDS = ["epoch", "train_loss", "val_dice", "lr", "epoch_seconds"]


def write_log(rows: list[dict[str, Any]], path: str | Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in LOG_FIELDS})


def plot_learning_curve(rows: list[dict[str, Any]], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ep = [r["epoch"] for r in rows]
    ax.plot(ep, [r["train_loss"] for r in rows], label="train loss", color="tab:blue")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (Dice + CE)")
    ax2 = ax.twinx()
    val = [(r["epoch"], r["val_dice"]) for r in rows if r.get("val_dice") is not None and math.isfinite(r["val_dice"])]
    if val:
        ax2.plot(*zip(*val, strict=True), "o-", color="tab:orange", label="val mean Dice")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("validation mean foreground Dice")
    fig.legend(loc="upper center", ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
