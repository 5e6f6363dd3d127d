"""Record the shipped brain-tumour bundle's training run and held-out evaluation in RESULTS.md.

The figures come from the bundle (``training_log.csv``, ``evaluation.json`` of the held-out
fold, both written by ``make train-brain-tumour-bundle``), so RESULTS.md says what ships.

    python benchmarks/brain_bundle.py --wall-s 3900 --load "15.9 -> 20.1"
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import markdown_table, record  # noqa: E402

BUNDLE = Path(__file__).resolve().parents[1] / "medpipe" / "bundles" / "brain_tumour_phantom"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wall-s", type=float, default=None, help="wall time of make train-brain-tumour-bundle, if measured")
    p.add_argument("--load", default="", help="load average during training, as measured")
    a = p.parse_args(argv)
    with open(BUNDLE / "training_log.csv") as f:
        log = list(csv.DictReader(f))
    train_s = sum(float(r["epoch_seconds"]) for r in log)
    ev = json.loads((BUNDLE / "evaluation.json").read_text())
    rows = [[name, f"{m['dice']:.3f}", f"{m['hd95']:.2f}", f"{m['nsd']:.3f}"] for name, m in ev["per_label"].items()]
    mean = ev["mean"]
    rows.append(["**mean**", f"**{mean['dice']:.3f}**", f"{mean['hd95']:.2f}", f"{mean['nsd']:.3f}"])
    weights_mb = (BUNDLE / "weights.safetensors").stat().st_size / 2**20
    wall = f"; wall time of the whole recipe {a.wall_s / 60:.1f} min" if a.wall_s else ""
    load = f" Load average (1 min) during training: {a.load}." if a.load else ""
    epochs = sorted(float(r["epoch_seconds"]) for r in log)
    body = (f"Bundle `{BUNDLE.relative_to(BUNDLE.parents[2])}` (reversible MBConv U-Net `revunet_xs`, weights "
            f"{weights_mb:.1f} MiB), trained by `make train-brain-tumour-bundle` with 1 thread: {len(log)} epochs, "
            f"{train_s / 60:.1f} min of training epochs (median {epochs[len(epochs) // 2]:.0f} s/epoch, including the "
            f"periodic validation){wall}.{load} Held-out BraTS-like phantom cases: {ev['n_cases']} (fold 0 of 5), "
            f"scored on their original grids, NSD tolerance {ev['nsd_tolerance_mm']} mm.\n\n"
            + markdown_table(["tumour sub-region", "Dice", "HD95 mm", "NSD"], rows))
    if a.wall_s:
        fastest = epochs[: max(1, len(epochs) // 4)]
        body += (f"\n\n- goal: trained in under 60 min on this 2-core CPU: {'met' if a.wall_s < 3600 else 'not met'} "
                 f"({a.wall_s / 60:.0f} min). At the pace of its fastest quarter of epochs "
                 f"({sum(fastest) / len(fastest):.0f} s/epoch) the {len(log)} epochs take "
                 f"{sum(fastest) / len(fastest) * len(log) / 60:.0f} min.\n")
    record("brain_bundle", "Shipped brain-tumour bundle: training time and held-out evaluation", body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
