"""The nnU-Net side of ``benchmarks/nnunet_compare.py``, run inside ``.venv-nnunet``.

Commands (one JSON object per line on stdin, one JSON reply per line on stdout), so the
benchmark can interleave nnU-Net and medpipe case by case in one run:

    {"cmd": "train", "raw": DIR, "work": DIR, "trainer": ..., "epochs": E, "iters": I, "fold": F,
     "init": CHECKPOINT or null}    # continues an earlier run of TRAINER in WORK up to E epochs; a
                                    # new one starts from INIT's weights (nnU-Net's -pretrained_weights)
    {"cmd": "load", "results": DIR, "folds": [..]}           # build the predictors once
    {"cmd": "predict", "image": FILE, "out": FILE, "tta": bool}  # -> {"seconds": s}
    {"cmd": "quit"}

Everything here is nnU-Net's own code: planner, preprocessing, trainer, predictor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _env(work: Path) -> None:
    os.environ.update(nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "preprocessed"),
                      nnUNet_results=str(work / "results"), nnUNet_n_proc_DA="1", nnUNet_def_n_proc="1")


def train(raw: str, work: str, trainer: str, epochs: int, iters: int, fold: int, init: str | None = None) -> dict:
    import shutil

    import torch

    work_p = Path(work)
    _env(work_p)
    dst = work_p / "raw" / "Dataset902_Phantom"
    if not dst.exists():
        shutil.copytree(raw, dst, ignore=shutil.ignore_patterns("preview.png"))
    t0 = time.perf_counter()
    pre = work_p / "preprocessed" / "Dataset902_Phantom" / "nnUNetPlans.json"
    if not pre.exists():
        subprocess.run(["nnUNetv2_plan_and_preprocess", "-d", "902", "-c", "3d_fullres", "-np", "1"], check=True,
                       stdout=sys.stderr)
    t_plan = time.perf_counter() - t0
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

    os.environ["nnUNet_n_proc_DA"] = "0"
    torch.manual_seed(0)
    tr = get_trainer_from_args("902", "3d_fullres", fold, trainer, "nnUNetPlans", device=torch.device("cpu"))
    tr.num_epochs, tr.num_iterations_per_epoch, tr.num_val_iterations_per_epoch = epochs, iters, 5
    # nnU-Net's own `--c`: an earlier run of this benchmark is continued up to `epochs` (its poly
    # learning rate restarts from (1 - epoch / epochs) ** 0.9), not repeated
    tr.save_every = 5  # checkpoint_latest every 5 epochs: an interrupted run loses little
    out_dir = Path(tr.output_folder)
    fresh = not any((out_dir / f"checkpoint_{k}.pth").is_file() for k in ("final", "latest", "best"))
    if fresh and init:  # nnU-Net's `nnUNetv2_train -pretrained_weights`: a new training from these weights
        maybe_load_checkpoint(tr, continue_training=False, validation_only=False, pretrained_weights_file=init)
    else:
        maybe_load_checkpoint(tr, continue_training=True, validation_only=False)
    start_epoch = tr.current_epoch
    history_file = work_p / f"train_history_{trainer}.json"
    history = json.loads(history_file.read_text()) if history_file.exists() else []
    t1 = time.perf_counter()
    tr.run_training()
    if tr.current_epoch > start_epoch:
        history.append({"from_epoch": start_epoch, "to_epoch": epochs, "iters_per_epoch": iters,
                        "seconds": round(time.perf_counter() - t1, 1),
                        **({"initialised_from": init} if fresh and init else {})})
        history_file.write_text(json.dumps(history, indent=1))
    return {"results": str(Path(tr.output_folder).parent), "plan_seconds": round(t_plan, 1),
            "train_seconds": round(sum(h["seconds"] for h in history), 1),
            "iterations": sum((h["to_epoch"] - h["from_epoch"]) * h["iters_per_epoch"] for h in history),
            "sessions": history}


class Predictors:
    def __init__(self) -> None:
        self.by_tta: dict[bool, object] = {}

    def load(self, results: str, folds: list) -> dict:
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        for tta in (False, True):
            p = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=tta,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                allow_tqdm=False)
            p.initialize_from_trained_model_folder(results, use_folds=tuple(folds),
                                                   checkpoint_name="checkpoint_final.pth")
            self.by_tta[tta] = p
        return {"ok": True}

    def predict(self, image: str, out: str, tta: bool) -> dict:
        p = self.by_tta[tta]
        t0 = time.perf_counter()
        p.predict_from_files([[image]], [out.removesuffix(".nii.gz")], save_probabilities=False, overwrite=True,
                             num_processes_preprocessing=1, num_processes_segmentation_export=1)
        return {"seconds": round(time.perf_counter() - t0, 3)}


def main() -> int:
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    import contextlib

    preds = Predictors()
    out = sys.stdout
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg.pop("cmd")
        if cmd == "quit":
            break
        try:
            with contextlib.redirect_stdout(sys.stderr):  # nnU-Net prints; stdout carries the replies
                reply = (train(**msg) if cmd == "train" else preds.load(**msg) if cmd == "load"
                         else preds.predict(**msg))
        except Exception as exc:  # report, keep serving
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), file=out, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
