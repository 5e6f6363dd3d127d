"""Ingest benchmark: load a 512x512x300 CT series, ours vs SimpleITK vs dicom2nifti (vs dcm2niix).

Writes one phantom series (int16, uncompressed, one file per slice) to a temp folder,
warms the page cache, then times each reader several times and reports the median.
Ours is timed end to end: ``load_series(scan_study(folder).series[0])``; SimpleITK as
``ImageSeriesReader`` over ``GetGDCMSeriesFileNames``; dicom2nifti and dcm2niix convert
to an uncompressed NIfTI (they must write a file, so they get that cost too).

Run: python benchmarks/ingest.py [--repeats 5] [--slices 300]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._results import markdown_table, record  # noqa: E402


def _median_time(fn, repeats: int) -> tuple[float, list[float], object]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    args = ap.parse_args()

    import SimpleITK as sitk

    from medpipe.data.dicom_writer import write_dicom_series
    from medpipe.data.phantoms import ct_phantom
    from medpipe.image import Image
    from medpipe.io.dicom import load_series, scan_study

    shape = (args.size, args.size, args.slices)
    with tempfile.TemporaryDirectory(prefix="medpipe-ingest-bench-") as tmp:
        tmp = Path(tmp)
        print(f"writing a {shape} phantom CT series ...", flush=True)
        ct, _ = ct_phantom(shape, (0.7, 0.7, 1.0), seed=0)
        ct = ct.with_array(np.round(ct.array).astype(np.int16))
        folder = tmp / "ct"
        files = write_dicom_series(ct, folder, modality="CT", series_description="bench")
        mb = sum(f.stat().st_size for f in files) / 2**20
        del ct

        def ours():
            return load_series(scan_study(folder).series[0])

        def simpleitk():
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
            return reader.Execute()

        def dicom2nifti_run():
            import dicom2nifti
            import dicom2nifti.settings

            dicom2nifti.settings.disable_validate_slice_increment()
            out = tmp / "d2n.nii"
            out.unlink(missing_ok=True)
            dicom2nifti.dicom_series_to_nifti(str(folder), str(out), reorient_nifti=False)
            return out

        def dcm2niix_run():
            out = tmp / "dcm2niix"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            subprocess.run(["dcm2niix", "-z", "n", "-b", "n", "-o", str(out), str(folder)], check=True, capture_output=True)
            return out

        rows = []
        results = {}
        runners = [("medpipe load_series(scan_study())", ours), ("SimpleITK ImageSeriesReader (GDCM)", simpleitk),
                   ("dicom2nifti dicom_series_to_nifti", dicom2nifti_run)]
        if shutil.which("dcm2niix"):
            runners.append(("dcm2niix -z n (subprocess)", dcm2niix_run))
        for name, fn in runners:
            print(f"timing {name} ...", flush=True)
            med, times, out = _median_time(fn, args.repeats)
            results[name] = (med, out)
            rows.append([name, f"{med:.3f}", f"{min(times):.3f}", f"{mb / med:.0f}"])
            print(f"  median {med:.3f} s", flush=True)

        ours_img = results[runners[0][0]][1]
        ref = Image.from_sitk(results[runners[1][0]][1])
        same = bool(np.allclose(ours_img.affine, ref.affine, atol=1e-4)) and bool(
            np.array_equal(ours_img.array, ref.array.astype(ours_img.array.dtype))
        )
        t_ours, t_sitk = results[runners[0][0]][0], results[runners[1][0]][0]
        body = (
            f"{shape[0]}x{shape[1]}x{shape[2]} int16 CT, one uncompressed file per slice ({mb:.0f} MiB), "
            f"warm page cache; median of {args.repeats} runs after a warm-up.\n\n"
            + markdown_table(["reader", "median s", "best s", "MiB/s"], rows)
            + f"\n\nmedpipe / SimpleITK time ratio: {t_ours / t_sitk:.2f} (goal <= 1.0). "
            f"Voxels and affine identical to SimpleITK: {same}. medpipe output dtype: {ours_img.array.dtype}.\n"
        )
        print(body)
        record("ingest", "DICOM ingest: 512x512x300 CT series", body)


if __name__ == "__main__":
    main()
