"""Crash-safe writing: every file lands whole or not at all (temporary file + rename)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from adfuse.errors import ConfigError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


@contextmanager
def waiting_lock(path: Path) -> Iterator[None]:
    """Exclusive use of ``path`` (a lock file) among processes; a second one waits its turn.

    An ``flock``: the kernel releases it when its holder dies, even by SIGKILL, so a crash never
    leaves a stale lock. The file is removed on release; a waiter that then holds the lock on the
    removed file notices (another inode now, or none) and takes the lock again.
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            current = os.stat(path).st_ino if path.exists() else None
        except BaseException:
            os.close(handle)
            raise
        if current == os.fstat(handle).st_ino:
            break
        os.close(handle)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(handle)


def is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


@contextmanager
def atomic_directory(out_dir: Path, force: bool = False) -> Iterator[Path]:
    """Build a folder in a temporary sibling; it replaces ``out_dir`` only when complete.

    A non-empty ``out_dir`` is refused unless ``force``; with force, the old folder is removed only
    after the new one is complete, so an interrupted run leaves the old one as it was.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: exists and is not a folder")
    if is_nonempty_dir(out_dir) and not force:
        raise ConfigError(f"{out_dir}: folder is not empty; pass --force to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield building
        if out_dir.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, retired / "old")
            os.replace(building, out_dir)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(building, out_dir)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
