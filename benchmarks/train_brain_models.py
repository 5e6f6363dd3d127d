"""STU-Net-S vs U-Mamba_Bot vs the reversible MBConv U-Net on the same brain-tumour phantoms
and the same budget: held-out Dice and seconds per epoch.

    python benchmarks/train_brain_models.py --cases 20 --epochs 6 --iters 15 --threads 1

Every model is trained by ``medpipe.training.train`` with identical settings (fold 0 of 5
held out, patch, spacing, batch, optimiser, epochs x iterations, seed), then its held-out
cases are predicted on their original grids and scored with ``medpipe.metrics``. Runs are
sequential in one process, so a loaded machine slows all of them alike.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import load_phrase, markdown_table, record  # noqa: E402

MODELS = ["stunet_s", "umamba_bot", "revunet_s"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=20)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--iters", type=int, default=15)
    p.add_argument("--patch", type=int, default=48)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--earlier-rows", type=Path, default=None,
                   help="JSON list of table rows measured by an earlier run with the same settings (kept first)")
    a = p.parse_args(argv)
    import torch

    from medpipe.data.nnunet_dataset import write_phantom_dataset
    from medpipe.models import model_info
    from medpipe.training.config import TrainConfig
    from medpipe.training.trainer import train

    torch.set_num_threads(a.threads)
    work = a.work or Path(tempfile.mkdtemp(prefix="brain_models_"))
    data = work / "dataset"
    if not (data / "dataset.json").exists():
        write_phantom_dataset(data, a.cases, seed=1, modality="brats", progress=False)
    load = os.getloadavg()
    import json

    rows = json.loads(a.earlier_rows.read_text()) if a.earlier_rows else []
    for name in [m for m in a.models.split(",") if m]:
        cfg = TrainConfig(model=name, epochs=a.epochs, iters_per_epoch=a.iters, batch_size=a.batch,
                          patch_size=[a.patch] * 3, spacing=[2.0, 2.0, 2.0], fold=0, n_folds=5, optimizer="adamw",
                          lr=3e-3, val_every=a.epochs, checkpoint_every=a.epochs, precision="fp32", threads=a.threads,
                          seed=0)
        t0 = time.perf_counter()
        result = train(data, None, cfg, work_dir=work / name, overwrite=True, progress=False)
        total = time.perf_counter() - t0
        ev = result.evaluation or {}
        per = {k: v["dice"] for k, v in ev.get("per_label", {}).items()}
        params = model_info(name, in_channels=4, num_classes=4).params
        rows.append([name, f"{params / 1e6:.2f} M", f"{ev.get('mean', {}).get('dice', float('nan')):.3f}",
                     *(f"{per.get(k, float('nan')):.3f}" for k in ("necrotic_core", "edema", "enhancing_tumor")),
                     f"{result.seconds_per_epoch:.1f}", f"{total:.0f}"])
        print(rows[-1], flush=True)
    load_after = os.getloadavg()
    table = markdown_table(["model", "params", "held-out mean Dice", "NCR", "ED", "ET", "s / epoch", "total s"], rows)
    body = (f"{a.cases} BraTS-like phantom cases (4 channels T1/T1c/T2/FLAIR, 64x64x48 at ~2 mm; fold 0 of 5 held "
            f"out), {a.epochs} epochs x {a.iters} iterations, batch {a.batch}, patch {a.patch}^3 at 2 mm, AdamW 3e-3, "
            f"fp32, {a.threads} thread(s), the same seed; held-out cases predicted on their original grids; "
            f"{load_phrase(load[0], load_after[0])}." + (" Rows from an earlier invocation with identical settings come first." if a.earlier_rows
                          else "") + "\n\n" + table + "\n\nA small equal budget: it ranks how fast each architecture learns here, not "
            "what it reaches when converged.\n")
    record("train_brain_models", "Brain tumour phantoms: STU-Net-S vs U-Mamba_Bot vs RevUNet (same budget)", body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
