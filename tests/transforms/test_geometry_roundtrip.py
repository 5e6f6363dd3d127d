"""Invertibility of the geometry transforms on oblique, flipped and anisotropic phantoms."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medpipe.data.phantoms import CT_LABELS, ct_phantom
from medpipe.errors import GeometryError
from medpipe.image import Image
from medpipe.transforms import (
    crop_foreground,
    geometry_history,
    reorient,
    resample_to_grid,
    resample_to_spacing,
    restore_geometry,
)


def _rotation(deg_x: float, deg_z: float) -> np.ndarray:
    ax, az = np.radians(deg_x), np.radians(deg_z)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ rx


def _affine(kind: str, spacing: tuple[float, float, float]) -> np.ndarray:
    a = np.eye(4)
    if kind == "lps":  # stored the DICOM way: +i -> left, +j -> posterior
        a[:3, :3] = np.diag([-1.0, -1.0, 1.0]) * spacing
    elif kind == "ras":
        a[:3, :3] = np.diag(spacing)
    elif kind == "oblique":  # tilted 17 deg about x, 9 deg about z, stored LPS
        a[:3, :3] = _rotation(17.0, 9.0) @ np.diag([-1.0, -1.0, 1.0]) @ np.diag(spacing)
    elif kind == "permuted":  # sagittal-like storage: i -> S, j -> P, k -> R
        a[:3, :3] = np.array([[0, 0, 1.0], [0, -1.0, 0], [1.0, 0, 0]]) @ np.diag(spacing)
    a[:3, 3] = [12.5, -30.25, 101.0]
    return a


# Voxel sizes large enough that the small grids hold the whole (adult-sized) phantom body.
CASES = {
    "lps": ((48, 48, 40), (8.0, 8.0, 8.0)),
    "ras": ((48, 48, 40), (8.0, 8.0, 8.0)),
    "oblique": ((48, 48, 40), (8.5, 8.5, 8.0)),
    "permuted": ((40, 48, 48), (9.0, 8.0, 7.0)),
    "anisotropic": ((56, 56, 16), (7.0, 7.0, 25.0)),
}


def _phantom(kind: str):
    shape, spacing = CASES[kind]
    aff_kind = "lps" if kind == "anisotropic" else kind
    return ct_phantom(shape, spacing, seed=1, affine=_affine(aff_kind, spacing))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


@pytest.mark.parametrize("kind", sorted(CASES))
@pytest.mark.parametrize("codes", ["RAS", "LPS", "PIR"])
def test_reorient_then_crop_restores_exactly(kind: str, codes: str) -> None:
    ct, lab = _phantom(kind)
    r, rec = reorient(lab, codes)
    assert r.orientation == codes and rec["op"] == "reorient"
    c, rec_c = crop_foreground(r, margin=1)
    assert rec_c["bbox"] != [[0, s] for s in r.shape]  # something was cropped
    back = restore_geometry(c, lab)
    assert back.shape == lab.shape
    assert np.array_equal(back.affine, lab.affine)
    assert np.array_equal(back.array, lab.array)
    assert back.array.dtype == lab.array.dtype


@pytest.mark.parametrize("kind", sorted(CASES))
def test_reorient_keeps_every_voxel_at_its_world_position(kind: str) -> None:
    ct, _ = _phantom(kind)
    r, _ = reorient(ct, "RAS")
    # The brightest voxel (unique thanks to noise) is at the same place in the world.
    i0 = np.unravel_index(np.argmax(ct.array[0]), ct.shape)
    i1 = np.unravel_index(np.argmax(r.array[0]), r.shape)
    np.testing.assert_allclose(ct.world_coords(np.array(i0)), r.world_coords(np.array(i1)), atol=1e-6)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_full_chain_restores_reference_grid_and_labels(kind: str) -> None:
    ct, lab = _phantom(kind)
    r, _ = reorient(lab, "RAS")
    s, _ = resample_to_spacing(r, 0.6 if kind != "anisotropic" else (0.5, 0.5, 2.0))  # 1.5-2x finer
    c, _ = crop_foreground(s, margin=2)
    assert [st["op"] for st in geometry_history(c)] == ["reorient", "resample", "crop"]
    back = restore_geometry(c, lab)
    assert back.shape == lab.shape and np.array_equal(back.affine, lab.affine)
    for value in CT_LABELS:
        d = _dice(lab.array[0] == value, back.array[0] == value)
        assert d >= 0.97, (kind, CT_LABELS[value], d)


@pytest.mark.parametrize("factor", [1.5, 2.0])
def test_coarser_resampling_round_trip_keeps_large_structures(factor: float) -> None:
    # Resolution really is lost going 1.5-2x coarser; a structure ~20 voxels in radius keeps
    # Dice >= 0.97 and its centroid, the phantom's liver keeps >= 0.95.
    g = np.indices((64, 64, 64)).astype(float)
    c = (31.3, 32.7, 30.2)
    ball = (np.sqrt(sum((g[i] - c[i]) ** 2 for i in range(3))) <= 21).astype(np.uint8)
    lab = Image(ball[None], _affine("oblique", (1.0, 1.0, 1.0)), is_label=True)
    s, _ = resample_to_spacing(lab, factor)
    back = restore_geometry(s, lab)
    assert np.array_equal(back.affine, lab.affine)
    assert _dice(ball > 0, back.array[0] > 0) >= 0.97
    np.testing.assert_allclose(
        ndimage.center_of_mass(ball), ndimage.center_of_mass(back.array[0] > 0), atol=0.15
    )
    _, liver = ct_phantom((64, 64, 48), (1.0, 1.0, 1.5), seed=2)
    s, _ = resample_to_spacing(liver, factor)
    b = restore_geometry(s, liver)
    assert _dice(liver.array[0] == 1, b.array[0] == 1) >= 0.95


def test_anisotropic_data_uses_order_zero_on_the_coarse_axis() -> None:
    ct, lab = _phantom("anisotropic")
    _, rec = resample_to_spacing(ct, (1.0, 1.0, 2.0))
    assert rec["orders"] == [3, 3, 0]
    _, rec = resample_to_spacing(lab, (1.0, 1.0, 2.0))
    assert rec["orders"] == [1, 1, 0]
    _, rec = resample_to_spacing(ct, (1.0, 1.0, 2.0), anisotropic=False)
    assert rec["orders"] == [3, 3, 3]


def test_restore_refuses_an_image_off_the_recorded_grid() -> None:
    ct, lab = _phantom("lps")
    s, _ = resample_to_spacing(lab, 2.0)
    wrong = Image(s.array[:, :-1], s.affine, s.meta, is_label=True)
    with pytest.raises(GeometryError, match="before undoing 'resample'"):
        restore_geometry(wrong, lab)
    moved = lab.affine.copy()
    moved[0, 3] += 5.0
    with pytest.raises(GeometryError, match="reference input has shape"):
        restore_geometry(s, Image(lab.array, moved, is_label=True))
    bare = Image(s.array, s.affine, is_label=True)  # history lost
    with pytest.raises(GeometryError, match="carries no geometry history"):
        restore_geometry(bare, lab, world_fallback=False)
    # With the fallback it still lands on the reference grid (through world coordinates).
    assert restore_geometry(bare, lab).same_grid(lab)


def test_resample_to_grid_detects_exact_index_mappings() -> None:
    _, lab = _phantom("lps")
    r, _ = reorient(lab, "RAS")
    c, rec = crop_foreground(r, margin=0)
    # Uncrop + un-reorient in one world-space call: pure indexing, labels identical, dtype kept.
    back = resample_to_grid(c, lab.shape, lab.affine)
    assert back.array.dtype == lab.array.dtype
    assert np.array_equal(back.array, lab.array)


def test_resample_to_grid_general_oblique_path_matches_world_positions() -> None:
    ct, _ = _phantom("ras")
    target = ct.affine.copy()
    target[:3, :3] = _rotation(10.0, 0.0) @ ct.affine[:3, :3]
    out = resample_to_grid(ct, ct.shape, target, order=1)
    # A voxel at the rotation's fixed point (the origin voxel) keeps its value.
    assert out.same_grid(Image(np.zeros((1, *ct.shape)), target))
    np.testing.assert_allclose(out.array[0, 0, 0, 0], ct.array[0, 0, 0, 0], atol=1e-3)


def test_probabilities_restore_with_background_fill() -> None:
    _, lab = _phantom("lps")
    onehot = np.stack([lab.array[0] != 1, lab.array[0] == 1]).astype(np.float32)
    probs = Image(onehot, lab.affine)
    c, _ = crop_foreground(probs.with_array(onehot[1:2]), margin=1)
    # crop the two-channel probability map with the same box
    from medpipe.transforms import crop_to_bbox

    pc, _ = crop_to_bbox(probs, c.meta.extra["geometry_history"][-1]["bbox"])
    back = restore_geometry(pc, probs)
    assert np.array_equal(back.array, onehot)  # background channel refilled with 1 outside the box
