"""Atomic writes: a failure leaves nothing behind, and outputs are not clobbered by accident."""

from __future__ import annotations

import pytest

from medpipe.errors import InputError
from medpipe.io.atomic import atomic_dir, atomic_path


def test_atomic_path_keeps_the_suffix_and_renames(tmp_path) -> None:
    target = tmp_path / "out" / "seg.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == target.parent
        tmp.write_bytes(b"data")
        assert not target.exists()
    assert target.read_bytes() == b"data"
    assert sorted(p.name for p in target.parent.iterdir()) == ["seg.nii.gz"]


def test_atomic_path_failure_leaves_no_file(tmp_path) -> None:
    target = tmp_path / "seg.nii.gz"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tmp_path) -> None:
    target = tmp_path / "a.json"
    target.write_text("old")
    with pytest.raises(InputError, match=r"a\.json already exists; pass --overwrite"), atomic_path(target, overwrite=False):
        pass
    assert target.read_text() == "old"


def test_atomic_dir_replaces_whole_folder_or_nothing(tmp_path) -> None:
    target = tmp_path / "bundle"
    with atomic_dir(target) as tmp:
        (tmp / "x.txt").write_text("1")
    assert (target / "x.txt").read_text() == "1"
    with pytest.raises(ValueError), atomic_dir(target, overwrite=True) as tmp:
        (tmp / "y.txt").write_text("2")
        raise ValueError("fail")
    assert sorted(p.name for p in target.iterdir()) == ["x.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "y.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["y.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_published_files_and_folders_get_the_umask_mode_not_the_temporaries(tmp_path) -> None:
    import os
    import stat

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "f.txt").write_text("x")
        with atomic_path(tmp_path / "file.json") as tmp:
            tmp.write_text("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o755  # mkdtemp alone gives 0700
    assert stat.S_IMODE((tmp_path / "file.json").stat().st_mode) == 0o644  # mkstemp alone gives 0600
