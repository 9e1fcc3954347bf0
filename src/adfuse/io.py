"""Crash-safe writing: every file lands whole or not at all (temporary file + rename).

Temporaries are hidden siblings named ``.NAME.tmp-PID-<random>`` (``.NAME.old-PID-...`` for a
folder being replaced). A process killed by SIGKILL cannot remove its own, so the next write of the
same file (of any folder, for folder builds) removes those whose process is no longer alive. The
check is by process id on this machine: on a folder shared between machines, another host's live
temporary would look stale to this one.
Files and folders get the mode the umask gives (``mkstemp``/``mkdtemp`` make them private).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from adfuse.errors import ConfigError

_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[a-z0-9_]+$")
_RETIRED = "old"  # inside an ``.old-`` temporary: the folder being replaced


def temporary_prefix(path: Path, kind: str = "tmp") -> str:
    """The name prefix of this process's temporaries for ``path`` (``kind``: tmp or old)."""
    return f".{Path(path).name}.{kind}-{os.getpid()}-"


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def remove_stale_temporaries(folder: Path, name: str | None = None) -> None:
    """Remove the temporaries in ``folder`` (of ``name`` only, when given) that processes which
    are no longer alive left behind."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None or (name is not None and match["name"] != name):
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or pid_alive(pid):
            continue
        retired, target = Path(entry.path) / _RETIRED, Path(folder) / match["name"]
        if match["kind"] == "old" and retired.is_dir() and not target.exists():
            os.replace(retired, target)  # killed between its two renames: the old folder back
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            Path(entry.path).unlink(missing_ok=True)


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (``os.umask`` sets it
    process-wide, a race with other threads creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def _new_temporary_file(path: Path) -> tuple[int, Path]:
    """An open descriptor and the path of a new temporary sibling of ``path``, with the mode a
    file created normally would have."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    handle, temporary = tempfile.mkstemp(prefix=temporary_prefix(path), dir=path.parent)
    try:
        os.fchmod(handle, 0o666 & ~_umask())
    except BaseException:
        os.close(handle)
        Path(temporary).unlink(missing_ok=True)
        raise
    return handle, Path(temporary)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling and an atomic rename."""
    path = Path(path)
    handle, temporary = _new_temporary_file(path)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_target(path: Path) -> Iterator[Path]:
    """A path for a writer that wants a file name (safetensors), inside a temporary sibling
    folder; it replaces ``path`` when the block ends without error. The folder holds whatever
    the writer makes beside its file (safetensors 0.8 writes a ``.tmp<random>`` of its own and
    renames it), so that a kill leaves nothing a later cleanup does not recognise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    folder = Path(tempfile.mkdtemp(prefix=temporary_prefix(path), dir=path.parent))
    try:
        target = folder / path.name
        yield target
        os.chmod(target, 0o666 & ~_umask())
        os.replace(target, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


class LockBusy(Exception):
    """``file_lock(..., wait=False)``: another process holds the lock (``owner``: its pid, or
    None when it has not written it yet)."""

    def __init__(self, owner: int | None):
        super().__init__(owner)
        self.owner = owner


@contextmanager
def file_lock(path: Path, wait: bool = True) -> Iterator[None]:
    """Exclusive use of ``path`` (a lock file) among processes; a second one waits its turn, or
    with ``wait=False`` gets ``LockBusy``.

    An ``flock``: the kernel releases it when its holder dies, even by SIGKILL, so a crash never
    leaves a stale lock, and two processes can never both hold it. The holder writes its pid into
    the file. The file is removed on release; a process that then holds the lock on the removed
    file notices (another inode now, or none) and takes the lock again.
    """
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            current = _inode(path)
        except BlockingIOError:
            os.close(handle)
            raise LockBusy(_lock_owner(path)) from None
        except BaseException:
            os.close(handle)
            raise
        if current == os.fstat(handle).st_ino:
            break
        os.close(handle)
    try:
        os.ftruncate(handle, 0)
        os.write(handle, str(os.getpid()).encode())
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(handle)


def _inode(path: Path) -> int | None:
    """The inode at ``path``, None when there is no file (the holder may remove it any time)."""
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _lock_owner(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


@contextmanager
def waiting_lock(path: Path) -> Iterator[None]:
    """``file_lock(path)``, waiting for the lock."""
    with file_lock(path, wait=True):
        yield


def is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


@contextmanager
def atomic_directory(out_dir: Path, force: bool = False) -> Iterator[Path]:
    """Build a folder in a temporary sibling; it replaces ``out_dir`` only when complete.

    Stale temporaries of dead processes in the parent folder are removed first. A non-empty
    ``out_dir`` is refused unless ``force``; with force, the old folder is removed only after the
    new one is complete, so an interrupted run leaves the old one as it was.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: exists and is not a folder")
    if is_nonempty_dir(out_dir) and not force:
        raise ConfigError(f"{out_dir}: folder is not empty; pass --force to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir.parent)
    building = Path(tempfile.mkdtemp(prefix=temporary_prefix(out_dir), dir=out_dir.parent))
    try:
        building.chmod(0o777 & ~_umask())
        yield building
        if out_dir.exists():
            retired = Path(
                tempfile.mkdtemp(prefix=temporary_prefix(out_dir, "old"), dir=out_dir.parent)
            )
            os.replace(out_dir, retired / _RETIRED)
            os.replace(building, out_dir)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(building, out_dir)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
