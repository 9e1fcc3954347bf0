"""The run folder (like ClinicaDL's MAPS): self-describing, reloadable, written atomically.

```
RUN/ run.json          config, model, task, seed, dataset fingerprint, versions, git commit, status
     split.json        subject ids per split
     preprocessing.json  fitted statistics and the subject ids they were fitted on
     checkpoints/      best.safetensors, last.safetensors, last_state.pt (optimizer, counters)
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
import platform
import subprocess
from contextlib import ExitStack, contextmanager
from importlib import metadata
from pathlib import Path

from adfuse.errors import ConfigError
from adfuse.io import LockBusy, file_lock

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


@contextmanager
def locked(folder: Path):
    """Exclusive use of a folder by this process (an ``flock`` on ``folder/.lock``: released by
    the kernel when its holder dies, so a killed run never leaves the folder locked); a second
    process is refused with a ConfigError naming the holder."""
    folder.mkdir(parents=True, exist_ok=True)
    held = ExitStack()
    try:
        held.enter_context(file_lock(folder / LOCK_FILE, wait=False))
    except LockBusy as busy:
        holder = f"process {busy.owner}" if busy.owner else "another process"
        raise ConfigError(f"{folder}: in use by {holder}") from None
    with held:
        yield folder
