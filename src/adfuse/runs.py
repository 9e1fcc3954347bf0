"""The run folder (like ClinicaDL's MAPS): self-describing, reloadable, written atomically.

```
RUN/ run.json          config, model, task, seed, dataset fingerprint, versions, git commit, status
     split.json        subject ids per split
     preprocessing.json  fitted statistics and the subject ids they were fitted on
     checkpoints/      best.safetensors, last.safetensors, last_state.pt (optimizer, RNG, counters)
     history.csv       one row per epoch
     metrics.json      test metrics with 95% CIs
     predictions/test.csv
     patterns.csv      metrics per modality-availability pattern
     efficiency.json   parameters, FLOPs, train time, energy (an estimate)
```
A lock file keeps two processes from writing one run.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from adfuse.errors import ConfigError

RUN_FORMAT = 1
RUN_FILE = "run.json"
LOCK_FILE = ".lock"
PACKAGES = (
    "adfuse",
    "torch",
    "numpy",
    "pandas",
    "scikit-learn",
    "monai",
    "nibabel",
    "transformers",
)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit() -> str | None:
    """The commit of the adfuse source tree, when it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def read_run(run_dir: Path) -> dict:
    """run.json of a run folder; a missing, unreadable or foreign-version file is a ConfigError."""
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        raise ConfigError(f"{run_dir}: not a run folder (no {RUN_FILE})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != RUN_FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise ConfigError(
            f"{path}: run format {found!r}, this adfuse reads format {RUN_FORMAT} "
            "(a run folder of another version)"
        )
    return data


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def locked(folder: Path):
    """Exclusive use of a folder by this process; a lock left by a dead process is taken over."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    for _ in range(2):
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                owner = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                owner = 0
            if owner and _pid_alive(owner) and owner != os.getpid():
                raise ConfigError(
                    f"{folder}: in use by process {owner} (remove {LOCK_FILE} if it is gone)"
                ) from None
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(handle, "w") as stream:
            stream.write(str(os.getpid()))
        break
    else:
        raise ConfigError(f"{folder}: could not take the lock")
    try:
        yield folder
    finally:
        lock.unlink(missing_ok=True)
