"""Atomic file writing: a crash never leaves a half-written file that loads as valid."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o644)  # mkstemp makes 0600; outputs are ordinary readable files
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")


@contextmanager
def atomic_dir(path: str | os.PathLike, replace_if: str | None = None) -> Iterator[Path]:
    """Build a directory under a temporary name and rename it into place when done.

    An existing `path` is replaced only if it contains the marker file `replace_if` (i.e. it is an
    earlier output of the same command); otherwise a non-empty existing directory is an error.
    """
    from capgen.errors import CapgenError

    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise CapgenError(f"{path}: exists and is not a directory; choose another --out")
        if any(path.iterdir()) and not (replace_if and (path / replace_if).exists()):
            raise CapgenError(f"{path}: directory exists and is not empty; choose another --out")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def folder_lock(path: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold an exclusive lock on folder `path` (created if missing) while its writer runs.

    A second writer gets a one-line CapgenError instead of silently interleaving its writes. The
    lock is an flock on PATH/.lock: the kernel drops it when the process dies, so a killed run
    never leaves a stale lock behind.
    """
    from capgen.errors import CapgenError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CapgenError(f"{path}: exists and is not a directory; choose another folder")
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CapgenError(f"{path}: another capgen process is writing this {what}; wait for it to finish "
                          f"or choose another folder") from None
    try:
        yield path
    finally:
        if created and [p.name for p in path.iterdir()] == [".lock"]:  # the writer failed before writing
            (path / ".lock").unlink()
            path.rmdir()
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
