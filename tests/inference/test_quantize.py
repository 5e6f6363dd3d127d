"""int8 quantisation of a bundle: calibration patches, the accuracy gate, the new bundle, int8 inference."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medpipe.cli import main
from medpipe.data.phantoms import ct_phantom
from medpipe.errors import BundleError, InputError
from medpipe.inference import predict
from medpipe.inference.precision import cpu_has_int8_dot, resolve_backend, resolve_precision
from medpipe.inference.quantize import (
    MIN_GATED_VOXELS,
    calibration_patches,
    edge_convolutions,
    quantize_bundle,
    quantize_network,
    unquantized_convolutions,
    worst_structure_dice,
)
from medpipe.inference.tiling import pad_amounts, plan_tiles
from medpipe.io.volumes import write_volume
from medpipe.models.bundle import load_bundle, save_bundle

pytest.importorskip("openvino")
pytest.importorskip("nncf")

SHIPPED = Path(__file__).resolve().parents[2] / "medpipe" / "bundles" / "ct_organs_phantom"


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def calibration_files(tmp_path_factory) -> list[Path]:
    """Three coarse CT phantoms covering the whole phantom abdomen (300x260x220 mm at 5 mm; the
    bundle resamples them to its 3 mm grid): two calibrate, one validates."""
    out = tmp_path_factory.mktemp("calibration")
    files = []
    for seed in (101, 102, 103):
        ct, _ = ct_phantom(shape=(60, 52, 44), spacing=(5.0, 5.0, 5.0), seed=seed, vary=True)
        files.append(out / f"ct_{seed}.nii.gz")
        write_volume(ct, files[-1])
    return files


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, calibration_files) -> tuple[Path, Path, dict, object]:
    """The shipped bundle quantised once for the module: (source copy, new bundle, source digest, report)."""
    root = tmp_path_factory.mktemp("quantized")
    src = root / "src"
    shutil.copytree(SHIPPED, src)
    if (src / "int8").exists():  # start from a plain bundle even when the shipped one is quantised
        shutil.rmtree(src / "int8")
        cfg = load_bundle(SHIPPED).config
        from medpipe.models.bundle import write_config

        write_config(src, cfg.model_copy(update={"quantization": None}))
    before = _tree_digest(src)
    bundle, report = quantize_bundle(src, calibration_files, root / "int8_bundle", max_patches=12)
    return src, bundle.path, before, report


def test_calibration_patches_are_the_engine_tiles_spread_evenly():
    rng = np.random.default_rng(0)
    vols = [rng.normal(size=(1, 40, 30, 20)).astype(np.float32), rng.normal(size=(1, 24, 24, 24)).astype(np.float32)]
    patch = (16, 16, 16)
    everything = calibration_patches(vols, patch, max_patches=10_000)
    expected = []
    for v in vols:
        padded = np.pad(v, [(0, 0), *pad_amounts(v.shape[1:], patch)])
        for _, origins in plan_tiles(padded.shape[1:], patch, 0.5).groups():
            for o in origins:
                expected.append(padded[:, o[0]:o[0] + 16, o[1]:o[1] + 16, o[2]:o[2] + 16])
    assert len(everything) == len(expected)
    for got, want in zip(everything, expected, strict=True):
        assert got.shape == (1, 1, 16, 16, 16) and got.dtype == np.float32
        np.testing.assert_array_equal(got[0], want)
    few = calibration_patches(vols, patch, max_patches=5)
    assert len(few) == 5
    np.testing.assert_array_equal(few[0], everything[0])  # first and last tile always included
    np.testing.assert_array_equal(few[-1], everything[-1])
    with pytest.raises(InputError, match="channel-first"):
        calibration_patches([vols[0][0]], patch)


def test_edge_convolutions_are_the_first_and_the_output_convs():
    from medpipe.inference.openvino_backend import convert_to_openvino
    from medpipe.models import create_model

    net = create_model("stunet_xs", in_channels=1, num_classes=3).eval()
    om, _ = convert_to_openvino(net, torch.zeros(1, 1, 64, 64, 64))
    convs = [op.get_friendly_name() for op in om.get_ordered_ops() if op.get_type_name() == "Convolution"]
    names = edge_convolutions(om)
    assert names[0] == convs[0]
    assert len(names) == 2 and names[1] in convs and names[1] != convs[0]
    # the output conv produces 3 channels (the classes)
    out_conv = next(op for op in om.get_ordered_ops() if op.get_friendly_name() == names[1])
    assert out_conv.get_output_partial_shape(0)[1].get_length() == 3


def test_worst_structure_dice_pools_pairs_and_skips_small_structures():
    ref = np.zeros((2, 20, 20, 20), np.int64)
    ref[0, :10], ref[1, :5] = 1, 1  # structure 1: 4000 + 2000 voxels
    ref[0, 15:, :2, :2] = 2  # structure 2: 20 voxels, below the gate's size
    got = ref.copy()
    got[1, :5] = 0  # the second tile loses structure 1 entirely
    got[0, 15:, :2, :2] = 0
    pairs = [(ref[0], got[0]), (ref[1], got[1])]
    assert worst_structure_dice(pairs, 3) == pytest.approx(2 * 4000 / (6000 + 4000))  # pooled, 2 ignored
    assert worst_structure_dice(pairs[1:], 3) == 0.0
    assert worst_structure_dice([(ref[0], ref[0])], 3) == 1.0
    tiny = np.zeros((8, 8, 8), np.int64)
    tiny[0] = 1
    assert 64 < MIN_GATED_VOXELS
    assert worst_structure_dice([(tiny, np.zeros_like(tiny))], 2) == pytest.approx(1 - 64 / 512)  # voxel agreement


def test_unquantized_convolutions_names_what_an_attempt_kept_fp32():
    from medpipe.inference.openvino_backend import convert_to_openvino

    b = load_bundle(SHIPPED)
    net = b.build_model()
    rng = np.random.default_rng(0)
    patches = [rng.normal(size=(1, 1, *b.config.preprocessing.patch_size)).astype(np.float32) for _ in range(2)]
    om, _ = convert_to_openvino(net, torch.from_numpy(patches[0]))
    assert unquantized_convolutions(om) == [op.get_friendly_name() for op in om.get_ordered_ops()
                                            if op.get_type_name() == "Convolution"]  # nothing quantised
    # every convolution is quantised, also those fed by a concatenation of quantised skips
    assert unquantized_convolutions(quantize_network(net, patches, om=om.clone())) == []
    edges = edge_convolutions(om)
    assert unquantized_convolutions(quantize_network(net, patches, keep_fp32=edges, om=om.clone())) == edges


def test_quantized_bundle_passes_its_gate_and_leaves_the_source_untouched(quantized, calibration_files):
    src, out, before, report = quantized
    assert _tree_digest(src) == before  # nothing the user gave us is modified
    b = load_bundle(out)
    q = b.config.quantization
    assert q is not None and report.accepted
    assert q.agreement == pytest.approx(report.agreement, abs=1e-6) and q.agreement >= 0.995
    assert q.calibration["volumes"] == ["ct_101.nii.gz", "ct_102.nii.gz"]
    assert q.calibration["validation_volumes"] == ["ct_103.nii.gz"]
    assert q.calibration["patches"] <= 12 and q.patch_size == list(b.config.preprocessing.patch_size)
    assert set(q.tools) == {"openvino", "nncf"}
    assert b.int8_path is not None and b.int8_path.is_file() and b.int8_path.with_suffix(".bin").is_file()
    # same weights and labels as the source
    assert (out / "weights.safetensors").read_bytes() == (src / "weights.safetensors").read_bytes()
    assert b.config.labels == load_bundle(src).config.labels
    row = report.attempts[-1]["volumes"][0]
    assert row["volume"] == "ct_103.nii.gz" and 0.995 <= row["agreement"] <= 1.0
    assert row["gated_classes"] and min(row["dice_vs_fp32"][c] for c in row["gated_classes"]) >= 0.95
    assert q.worst_class_dice == pytest.approx(row["worst_gated_dice"], abs=1e-5)


def test_int8_prediction_agrees_with_fp32_and_auto_picks_it_on_vnni(quantized, calibration_files):
    _, out, _, _ = quantized
    b = load_bundle(out)
    from medpipe.io.volumes import read_volume
    from medpipe.training.preprocess import preprocess_image

    vol = preprocess_image(read_volume(calibration_files[2]), b.config.preprocessing.model_dump()).array
    net = b.build_model()
    kw = dict(num_classes=b.config.num_classes, progress=False)
    ref = predict(net, vol, b.config.preprocessing.patch_size, precision="fp32", **kw)
    got = predict(net, vol, b.config.preprocessing.patch_size, precision="int8", int8_model=b.int8_path, **kw)
    assert got.facts["precision"] == "int8" and got.facts["backend"] == "openvino"
    assert (got.labels == ref.labels).mean() >= 0.995
    auto = predict(net, vol, b.config.preprocessing.patch_size, int8_model=b.int8_path, **kw)
    tuned = auto.facts["autotune"]  # measured auto: int8 is a candidate on VNNI CPUs, chosen only if fastest + gated
    assert tuned["choice"] == f"{auto.facts['backend']} {auto.facts['precision']}"
    assert ("openvino int8" in {c["candidate"] for c in tuned["candidates"]}) == cpu_has_int8_dot()
    assert (auto.labels == ref.labels).mean() >= 0.99
    # batch 2: the saved batch-1 IR is reshaped, same labels
    two = predict(net, vol, b.config.preprocessing.patch_size, precision="int8", int8_model=b.int8_path,
                  batch_size=2, **kw)
    assert two.facts["openvino"]["input_shape"] == [2, 1, *b.config.preprocessing.patch_size]
    assert (two.labels == ref.labels).mean() >= 0.995


def test_gate_failure_writes_nothing_and_gives_the_numbers(tmp_path):
    noise = tmp_path / "noise.nii.gz"
    ct, _ = ct_phantom(shape=(48, 48, 48), spacing=(2.0, 2.0, 2.0), seed=5)
    rng = np.random.default_rng(0)
    write_volume(ct.with_array(rng.normal(0, 400, ct.array.shape).astype(np.float32)), noise)
    out = tmp_path / "never"
    said: list[str] = []
    with pytest.raises(BundleError, match=r"agrees with fp32 on only [\d.]+% .*gate 100\.00%.*Dice.*even with "
                                          r"([2-9]|\d\d+) of \d+ convolutions kept in fp32; no bundle was written"):
        quantize_bundle(SHIPPED, [noise], out, min_agreement=1.0, max_patches=2, max_restored=1, log=said.append)
    assert not out.exists() and not list(tmp_path.glob(".*never*"))
    # all three attempts ran: plain, edge convolutions in fp32, accuracy control
    assert [m.split(":")[0] for m in said if "agreement with fp32" in m] == [
        "all layers int8", "first and output convolutions kept fp32", "accuracy-controlled"]


def test_changed_weights_or_missing_files_invalidate_the_int8_model(quantized, tmp_path):
    _, out, _, _ = quantized
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    from safetensors.torch import load_file, save_file

    state = load_file(str(copy / "weights.safetensors"))
    first = next(iter(state))
    state[first] = state[first] + 0.01
    save_file(state, str(copy / "weights.safetensors"))
    with pytest.raises(BundleError, match="quantised from other weights"):
        load_bundle(copy)
    shutil.copy2(out / "weights.safetensors", copy / "weights.safetensors")
    (copy / "int8" / "model.bin").unlink()
    with pytest.raises(BundleError, match=r"int8 model but .*model\.bin is missing"):
        load_bundle(copy)


def test_int8_requests_without_a_model_or_on_torch_are_refused(quantized):
    net = load_bundle(SHIPPED).build_model()
    vol = np.zeros((1, 48, 48, 48), np.float32)
    with pytest.raises(InputError, match="precision 'int8' needs a quantised model"):
        predict(net, vol, (48, 48, 48), num_classes=9, precision="int8", progress=False)
    with pytest.raises(InputError, match="backend='torch' cannot run it"):
        resolve_backend("torch", resolve_precision("int8"))
    with pytest.raises(InputError, match="runs on the CPU"):
        resolve_precision("int8", "cuda")
    b = load_bundle(quantized[1])
    with pytest.raises(BundleError, match="new weights invalidate the int8 model"):
        save_bundle(quantized[1].parent / "again", net, b.config)


def test_cli_quantize_refuses_bad_input_and_shows_the_int8_model(quantized, calibration_files, tmp_path, capsys):
    src = quantized[0]
    assert main(["models", "quantize", str(src), str(src), "-c", str(calibration_files[0])]) != 0
    assert "must be a new folder" in capsys.readouterr().err
    assert main(["models", "quantize", str(src), str(tmp_path / "x"), "-c", str(tmp_path / "nope.nii.gz")]) != 0
    assert "nope.nii.gz does not exist" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["models", "show", str(quantized[1])]) == 0
    assert "int8 model    int8/ (agreement with fp32" in capsys.readouterr().out
