"""Record the shipped CT bundle's training run and held-out evaluation in RESULTS.md.

The numbers come from the bundle itself (written by ``make train-ct-bundle``:
``training_log.csv`` per-epoch wall time, ``evaluation.json`` on the held-out fold), so
what RESULTS.md says is exactly what ships. Re-run after retraining the bundle.

    .venv/bin/python benchmarks/ct_bundle.py
    .venv/bin/python benchmarks/ct_bundle.py --bundle ct_organs_2d_phantom --load-log uptime.log   # the 2D bundle

``--load-log`` is a file of ``uptime`` lines sampled while the bundle trained; their load
averages are summarised next to the timing (timings under load are upper bounds).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._results import markdown_table, record  # noqa: E402

BUNDLES = Path(__file__).resolve().parents[1] / "medpipe" / "bundles"
BUNDLE = BUNDLES / "ct_organs_phantom"
SECTIONS = {"ct_organs_phantom": ("ct_bundle", "Shipped CT bundle: training time and held-out evaluation"),
            "ct_organs_2d_phantom": ("ct_bundle_2d", "Shipped 2D CT bundle: training time and held-out evaluation"),
            "brain_t1_lesion": ("brain_t1_bundle", "Shipped MRI brain bundle (GM/WM/lesion on T1): training time and "
                                "held-out evaluation")}
MAKE_TARGET = {"ct_organs_phantom": "train-ct-bundle", "ct_organs_2d_phantom": "train-ct-2d-bundle",
               "brain_t1_lesion": "train-brain-t1-bundle"}


def _load_summary(path: Path | None) -> str:
    if path is None:
        return ""
    import re

    ones = [float(m.group(1)) for m in re.finditer(r"load average: ([\d.]+),", path.read_text())]
    if not ones:
        return ""
    return (f" Load average (1 min) while it trained, sampled every minute: min {min(ones):.1f}, median "
            f"{sorted(ones)[len(ones) // 2]:.1f}, max {max(ones):.1f} on 2 cores (a shared machine: the time is an "
            "upper bound).")


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=BUNDLE.name, choices=sorted(SECTIONS))
    p.add_argument("--load-log", type=Path, default=None)
    p.add_argument("--recipe-log", type=Path, default=None, help="the recipe's output (its total wall time)")
    args = p.parse_args(argv)
    bundle_dir = BUNDLES / args.bundle
    section, title = SECTIONS[args.bundle]
    extra = _load_summary(args.load_log)
    if args.recipe_log is not None:
        import re

        m = re.search(r": (\d+) s total \((\d+) s data", args.recipe_log.read_text())
        if m:
            extra = (f" Wall time of the whole recipe (phantoms, training, held-out evaluation, bundle): "
                     f"{int(m.group(1)) / 60:.1f} min." + extra)
    _report(bundle_dir, section, title, extra)


def _report(bundle: Path, section: str, title: str, load: str) -> None:
    import yaml

    arch = yaml.safe_load((bundle / "model.yaml").read_text())["architecture"]
    with open(bundle / "training_log.csv") as f:
        log = list(csv.DictReader(f))
    train_s = sum(float(r["epoch_seconds"]) for r in log)
    ev = json.loads((bundle / "evaluation.json").read_text())
    def f(v, digits=3):  # a label absent from every held-out case has no score (null / NaN)
        return "—" if v is None or v != v else f"{v:.{digits}f}"

    rows = [[name, f(m["dice"]), f(m["hd95"], 2), f(m["nsd"])] for name, m in ev["per_label"].items()]
    mean = ev["mean"]
    rows.append(["**mean**", f"**{f(mean['dice'])}**", f(mean["hd95"], 2), f(mean["nsd"])])
    weights_mb = (bundle / "weights.safetensors").stat().st_size / 2**20
    body = (
        f"Bundle `{bundle.relative_to(bundle.parents[2])}` ({arch}, weights {weights_mb:.1f} MiB), trained by "
        f"`make {MAKE_TARGET[bundle.name]}`: {len(log)} epochs, "
        f"{train_s / 60:.1f} min of training epochs on this 2-core CPU "
        f"(median {sorted(float(r['epoch_seconds']) for r in log)[len(log) // 2]:.1f} s/epoch, including the "
        f"periodic validation epochs). Held-out cases: {ev['n_cases']} (fold 0 of 5), scored on their "
        f"original grids, NSD tolerance {ev['nsd_tolerance_mm']} mm.{load}\n\n"
        + markdown_table(["structure", "Dice", "HD95 mm", "NSD"], rows)
    )
    print(body)
    record(section, title, body)


if __name__ == "__main__":
    main()
