"""What int8 would be worth for the registration network: the shipped MICDIR through OpenVINO
fp32, bf16 and int8 (NNCF post-training quantisation, ``medpipe.inference.quantize``) on the
registration benchmark's working grids, in one run.

int8 is calibrated on six random diffeomorphic warps of the MNI152 atlas (the bundle's training
distribution), never on the held-out pairs. Reported: seconds of one pass (best of 3 after a
warm-up), and the mean and largest velocity difference from fp32 in voxels. The Dice that int8
would give is not measured here; ``register`` does not offer int8.

    python benchmarks/registration_int8.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import load_phrase, markdown_table, record  # noqa: E402
from registration import _pairs  # noqa: E402

CALIBRATION_WARPS = 6


def _calibration(grid: tuple[int, ...], spacing: float, seed: int = 123) -> list[np.ndarray]:
    """Network inputs (fixed, moving) of random warps of the MNI152 atlas on its working grid."""
    import torch

    from medpipe.data.brains import mni152
    from medpipe.data.deformations import augment_intensity, normalize_intensity, random_displacement
    from medpipe.registration import spatial
    from medpipe.registration.deep import to_working_grid, working_grid

    mni, _ = mni152(2.0)
    aff, shape = working_grid(mni, spacing, grid)
    base = normalize_intensity(mni.array[0]).astype(np.float32)
    fixed = to_working_grid(mni.with_array(base[None]), aff, shape)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(CALIBRATION_WARPS):
        true = random_displacement(mni.shape, rng, amplitude=2.0)
        moved = augment_intensity(spatial.warp(torch.from_numpy(base)[None, None], spatial.invert(true)), rng, 1.0)
        moving = to_working_grid(mni.with_array(moved[0].numpy()), aff, shape)
        out.append(np.stack([fixed, moving])[None].astype(np.float32))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--micdir", default="brain_micdir")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import openvino as ov
    import torch
    import torch.nn.functional as F

    from medpipe.inference.openvino_backend import convert_to_openvino
    from medpipe.inference.quantize import quantize_network
    from medpipe.registration.deep import to_working_grid, working_grid
    from medpipe.registration.register import _network

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    b, settings, net = _network(args.micdir, "micdir", "cpu")
    spacing = float(b.config.preprocessing.spacing[0])
    calibration = _calibration(tuple(settings.grid), spacing)
    core = ov.Core()
    times: dict[str, list[float]] = {}
    diffs: dict[str, list[tuple[float, float]]] = {}
    quantize_s = []
    for p in _pairs(2, 2.0, 0):
        aff, shape = working_grid(p["fixed"], spacing, tuple(settings.grid))
        x = np.stack([to_working_grid(p["fixed"], aff, shape), to_working_grid(p["moving"], aff, shape)])[None]
        om, _ = convert_to_openvino(net.eval(), torch.from_numpy(x))
        cal = [c if c.shape == x.shape else F.interpolate(torch.from_numpy(c), size=shape, mode="trilinear").numpy()
               for c in calibration]
        t0 = time.perf_counter()
        qm = quantize_network(net, cal, om=om)
        quantize_s.append(time.perf_counter() - t0)
        ref = None
        for name, model, hint in (("OpenVINO fp32", om, "f32"), ("OpenVINO bf16", om, "bf16"),
                                  ("OpenVINO int8 (NNCF)", qm, "f32")):
            compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                         "INFERENCE_NUM_THREADS": args.threads})
            out = compiled(x)[compiled.output(0)]  # warm-up
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                out = compiled(x)[compiled.output(0)]
                best = min(best, time.perf_counter() - t)
            ref = out if ref is None else ref
            d = np.abs(out - ref)
            times.setdefault(name, []).append(best)
            diffs.setdefault(name, []).append((float(d.mean()), float(d.max())))
        print(p["name"], {k: round(v[-1], 3) for k, v in times.items()}, flush=True)
    load_after = os.getloadavg()
    base = float(np.mean(times["OpenVINO fp32"]))
    rows = [[name, f"{np.mean(t):.2f}", f"{base / np.mean(t):.1f}x",
             f"{min(d[0] for d in diffs[name]):.3f}-{max(d[0] for d in diffs[name]):.3f}",
             f"{max(d[1] for d in diffs[name]):.3f}"] for name, t in times.items()]
    text = (f"The registration benchmark's 4 pairs (working grids), the shipped `{args.micdir}`, "
            f"{args.threads} thread(s); int8 calibrated on {CALIBRATION_WARPS} random warps of MNI152 "
            f"({np.mean(quantize_s):.0f} s per grid shape); "
            f"{load_phrase(load_before[0], load_after[0])}. The int8 Dice is not measured.\n\n"
            + markdown_table(["network", "s / pass", "vs fp32", "mean velocity difference (voxels, per pair)",
                              "largest (voxels)"], rows))
    print(text)
    if not args.no_record:
        record("registration_int8", "Registration: MICDIR in int8 (NNCF) vs fp32 / bf16", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
