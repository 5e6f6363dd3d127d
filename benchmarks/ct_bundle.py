"""Record the shipped CT bundle's training run and held-out evaluation in RESULTS.md.

The numbers come from the bundle itself (written by ``make train-ct-bundle``:
``training_log.csv`` per-epoch wall time, ``evaluation.json`` on the held-out fold), so
what RESULTS.md says is exactly what ships. Re-run after retraining the bundle.

    .venv/bin/python benchmarks/ct_bundle.py
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._results import markdown_table, record  # noqa: E402

BUNDLE = Path(__file__).resolve().parents[1] / "medpipe" / "bundles" / "ct_organs_phantom"


def main() -> None:
    with open(BUNDLE / "training_log.csv") as f:
        log = list(csv.DictReader(f))
    train_s = sum(float(r["epoch_seconds"]) for r in log)
    ev = json.loads((BUNDLE / "evaluation.json").read_text())
    rows = [[name, f"{m['dice']:.3f}", f"{m['hd95']:.2f}", f"{m['nsd']:.3f}"] for name, m in ev["per_label"].items()]
    mean = ev["mean"]
    rows.append(["**mean**", f"**{mean['dice']:.3f}**", f"{mean['hd95']:.2f}", f"{mean['nsd']:.3f}"])
    weights_mb = (BUNDLE / "weights.safetensors").stat().st_size / 2**20
    body = (
        f"Bundle `{BUNDLE.relative_to(BUNDLE.parents[2])}` (STU-Net-XS, weights {weights_mb:.1f} MiB), trained by "
        f"`make train-ct-bundle`: {len(log)} epochs, {train_s / 60:.1f} min of training epochs on this 2-core CPU "
        f"(median {sorted(float(r['epoch_seconds']) for r in log)[len(log) // 2]:.1f} s/epoch, including the "
        f"periodic validation epochs). Held-out phantom cases: {ev['n_cases']} (fold 0 of 5), scored on their "
        f"original grids, NSD tolerance {ev['nsd_tolerance_mm']} mm.\n\n"
        + markdown_table(["structure", "Dice", "HD95 mm", "NSD"], rows)
    )
    print(body)
    record("ct_bundle", "Shipped CT bundle: training time and held-out evaluation", body)


if __name__ == "__main__":
    main()
