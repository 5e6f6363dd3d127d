"""Atomic file and folder writes: readers never see a half-written output.

Everything medpipe writes goes to a temporary sibling first and is renamed into place
(``os.replace`` is atomic on one filesystem). On any exception the temporary is removed,
so a failed run leaves no partial file behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from medpipe.errors import InputError

__all__ = ["atomic_path", "atomic_dir", "check_writable", "locked"]


def check_writable(path: Path, overwrite: bool) -> None:
    """Refuse to clobber an existing output unless asked to."""
    if path.exists() and not overwrite:
        raise InputError(f"{path} already exists; pass --overwrite to replace it")


@contextlib.contextmanager
def atomic_path(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path in the same folder; rename it to ``path`` on success.

    The temporary keeps ``path``'s full suffix (``.nii.gz``) so writers that choose a
    format by extension do the right thing.
    """
    path = Path(path)
    check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; the published file gets the usual mode
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False, tmp_prefix: str | None = None) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; move it into place on success.

    ``tmp_prefix`` names the temporaries (default ``.<name>.``) so a caller can find and
    clean the ones a killed process left behind (the pipeline runner puts its pid in it).
    """
    path = Path(path)
    check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = tmp_prefix or f".{path.name}."
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the published folder gets the usual mode
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{prefix}old-", dir=path.parent))
            os.rmdir(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def locked(path: Path, blocking: bool = True, shared: bool = False) -> Iterator[bool]:
    """An advisory ``flock`` on ``path`` (yields False if non-blocking and held elsewhere);
    ``shared`` locks coexist with each other but not with an exclusive one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
            fcntl.flock(f, mode | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
