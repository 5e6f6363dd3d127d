"""Deterministic k-fold splits (nnU-Net's: case names sorted, shuffled with seed 12345)."""

from __future__ import annotations

import numpy as np

from medpipe.errors import InputError

__all__ = ["kfold_split"]


def kfold_split(names: list[str], fold: int, n_folds: int = 5, seed: int = 12345) -> tuple[list[str], list[str]]:
    """(train, validation) case names of ``fold``; ``fold=-1`` trains on all, validates on none."""
    names = sorted(names)
    if fold == -1:
        return names, []
    if n_folds < 2:
        raise InputError(f"need at least 2 folds, got {n_folds}")
    if not 0 <= fold < n_folds:
        raise InputError(f"fold must be 0..{n_folds - 1} (or -1 for all cases), got {fold}")
    if len(names) < n_folds:
        raise InputError(f"{len(names)} cases cannot be split into {n_folds} folds; use fewer folds or --fold -1")
    order = np.random.default_rng(seed).permutation(len(names))
    parts = np.array_split(order, n_folds)
    val = sorted(names[i] for i in parts[fold])
    train = sorted(n for n in names if n not in set(val))
    return train, val
