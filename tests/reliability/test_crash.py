"""Crash safety for real: ``kill -9`` at a random (seeded) point of synth, cache building, training
and benchmarking; running the same command again (``--resume`` for training) gives the files and
metrics of an uninterrupted run. And a lock: two processes never write one run or cache entry.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.reliability.helpers import ADFUSE, run_script, snapshot, synthesised

SEED = 20261123  # one seed for every random kill point: the same points on every run


def environment() -> dict[str, str]:
    """Every process of a comparison runs with one torch thread: thread counts change how CPU
    kernels split their sums, so runs with different counts differ in the last bits."""
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1"}


def start(args: list[str]) -> subprocess.Popen:
    """A background process; its stderr goes to a file (a pipe nobody reads could fill up)."""
    import tempfile

    errors = tempfile.TemporaryFile()
    process = subprocess.Popen(
        [str(a) for a in args], env=environment(), stdout=subprocess.DEVNULL, stderr=errors
    )
    process.errors = errors
    return process


def errors_of(process: subprocess.Popen) -> str:
    process.errors.seek(0)
    return process.errors.read().decode(errors="replace")


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], delay: float) -> bool:
    """SIGKILL ``process`` ``delay`` seconds after ``ready()`` first holds; True if it was killed
    (False: it ended first)."""
    deadline = time.monotonic() + 240
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            process.wait()
            return False
        time.sleep(0.005)
    time.sleep(delay)
    if process.poll() is not None:
        return False
    process.send_signal(signal.SIGKILL)
    process.wait()
    return process.returncode == -signal.SIGKILL


def without_hidden(files: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in files.items() if not any(p.startswith(".") for p in k.split("/"))}


# --------------------------------------------------------------------------- synth
def test_synth_killed_then_rerun_gives_the_same_files(tmp_path):
    rng = random.Random(SEED)
    command = [ADFUSE, "synth", "--subjects", "60", "--seed", "2"]
    command += ["--modalities", "clinical,genotype,t1,fmri"]
    reference = run_script([*command[1:], tmp_path / "reference"])
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "killed"
    process = start([*command, out])
    temporary = lambda: any(p.name.startswith(".killed.tmp-") for p in tmp_path.iterdir())  # noqa: E731
    assert kill_when(process, temporary, rng.uniform(0.0, 0.5)), "synth ended before the kill"
    assert not out.exists(), "a killed synth left a partial dataset"
    again = run_script([*command[1:], out])
    assert again.returncode == 0, again.stderr
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".killed.")], (
        "the killed synth's temporary folder is still there"
    )
    expected = snapshot(tmp_path / "reference")
    assert snapshot(out) == expected
    # --modalities: only what was asked for is written
    assert any(out.rglob("*_T1w.nii.gz")) and any(out.rglob("*_timeseries.tsv"))
    assert not any(out.rglob("*_FLAIR.nii.gz")) and not (out / "notes.jsonl").exists()


# --------------------------------------------------------------------------- the cache
PREPARE = (  # 20 ms a subject more: the build lasts ~2 s, so the kill lands inside it
    "import sys, time\n"
    "from adfuse import load_cohort, prepare\n"
    "from adfuse.data.cohort import Cohort\n"
    "read = Cohort.read_timeseries\n"
    "Cohort.read_timeseries = lambda *a, **k: (time.sleep(0.02), read(*a, **k))[1]\n"
    "prepare.dataset(load_cohort(sys.argv[1]), 'diagnosis', ['fmri'], cache_dir=sys.argv[2])\n"
)


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory) -> Path:
    return synthesised(tmp_path_factory, 300, 0, ("clinical", "genotype", "fmri"))


def test_cache_build_killed_then_rebuilt_equals_an_uninterrupted_one(cohort_dir, tmp_path):
    rng = random.Random(SEED + 1)
    reference, cache = tmp_path / "reference", tmp_path / "cache"
    done = subprocess.run(
        [sys.executable, "-c", PREPARE, cohort_dir, reference], check=True, env=environment()
    )
    assert done.returncode == 0
    process = start([sys.executable, "-c", PREPARE, cohort_dir, cache])
    building = lambda: cache.is_dir() and any(cache.glob("*.tmp-*/data.npy"))  # noqa: E731
    assert kill_when(process, building, rng.uniform(0.05, 0.8)), "the build ended before the kill"
    assert not [
        p for p in cache.iterdir() if not p.name.endswith((".lock",)) and ".tmp-" not in p.name
    ]
    subprocess.run(
        [sys.executable, "-c", PREPARE, cohort_dir, cache], check=True, env=environment()
    )
    assert snapshot(cache) == snapshot(reference)  # the killed build's leftovers are gone too


def test_a_cache_entry_is_built_by_one_process_at_a_time(cohort_dir, tmp_path):
    """While another process holds an entry's lock, a second builder waits, then builds."""
    from adfuse import load_cohort
    from adfuse.io import waiting_lock
    from adfuse.prepare import PrepareConfig, cache_key

    cache = tmp_path / "cache"
    key = cache_key(load_cohort(cohort_dir).fingerprint(), "fmri", "series", PrepareConfig())
    entry = cache / f"fmri-series-{key}"
    lock = entry.with_name(entry.name + ".lock")
    with waiting_lock(lock):
        process = start([sys.executable, "-c", PREPARE, cohort_dir, cache])
        waiting = lambda: opened_by(process.pid, lock)  # noqa: E731
        deadline = time.monotonic() + 120
        while not waiting() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)  # it has the lock file open: it now waits instead of building
        assert process.poll() is None, errors_of(process)
        assert not entry.exists() and not list(cache.glob("*.tmp-*"))
    assert process.wait(timeout=120) == 0, errors_of(process)
    assert (entry / "data.npy").is_file() and not list(cache.glob("*.lock"))


def opened_by(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open (Linux /proc)."""
    try:
        links = [fd.readlink() for fd in Path(f"/proc/{pid}/fd").iterdir()]
    except OSError:
        return False
    return path in links


# --------------------------------------------------------------------------- training
def train_command(dataset: Path, out: Path, cache: Path) -> list:
    return [
        ADFUSE, "train", dataset, "--model", "early_fusion", "--modalities", "clinical,fmri",
        "--epochs", "25", "--batch-size", "8", "--out", out, "--cache", cache, "--seed", "3",
    ]  # fmt: skip


def history_rows(run: Path) -> int:
    path = run / "history.csv"
    return len(path.read_text().splitlines()) - 1 if path.exists() else 0


def test_training_killed_twice_then_resumed_equals_an_uninterrupted_run(cohort_dir, tmp_path):
    import pandas as pd
    import torch
    from safetensors import safe_open

    rng = random.Random(SEED + 2)
    cache = tmp_path / "cache"
    whole = tmp_path / "whole"
    subprocess.run([str(a) for a in train_command(cohort_dir, whole, cache)], check=True,
                   capture_output=True, env=environment())  # fmt: skip
    killed = tmp_path / "killed"
    epochs = history_rows(whole)  # early stopping may end it before --epochs
    assert epochs >= 5
    first = rng.randint(0, epochs // 3)
    second = rng.randint(first + 1, epochs - 2)
    for epochs_done, extra in ((first, rng.uniform(0, 0.3)), (second, rng.uniform(0, 0.05))):
        resume = ["--resume"] if (killed / "run.json").exists() else []
        process = start([*train_command(cohort_dir, killed, cache), *resume])
        ready = lambda n=epochs_done: history_rows(killed) > n  # noqa: E731
        assert kill_when(process, ready, extra), "training ended before the kill"
        assert json.loads((killed / "run.json").read_text())["status"] == "training"
    result = subprocess.run(
        [str(a) for a in [*train_command(cohort_dir, killed, cache), "--resume"]],
        capture_output=True,
        text=True,
        env=environment(),
    )
    assert result.returncode == 0, result.stderr
    for name in ("metrics.json", "predictions/test.csv", "patterns.csv"):
        assert (whole / name).read_bytes() == (killed / name).read_bytes(), name
    # history.csv: identical but for the seconds column (wall-clock time)
    a, b = (pd.read_csv(r / "history.csv").drop(columns="seconds") for r in (whole, killed))
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    for name in ("best.safetensors", "last.safetensors"):
        # tensors and metadata (safetensors writes its metadata keys in no fixed order)
        a, b = (safe_open(r / "checkpoints" / name, "pt") for r in (whole, killed))
        assert a.metadata() == b.metadata() and set(a.keys()) == set(b.keys())
        different = [k for k in a.keys() if not torch.equal(a.get_tensor(k), b.get_tensor(k))]
        assert not different, f"{name}: {len(different)} tensors differ, e.g. {different[:3]}"
    assert not list(killed.rglob(".*tmp*")) and not (killed / ".lock").exists()


def test_a_second_process_cannot_write_a_run_in_use(cohort_dir, tmp_path):
    """--force on a run folder another process is training into is refused; the first run ends
    unharmed (without the lock the second would delete its files)."""
    out, cache = tmp_path / "run", tmp_path / "cache"
    process = start(train_command(cohort_dir, out, cache))
    try:
        deadline = time.monotonic() + 120
        while not (out / ".lock").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        second = run_script([*map(str, train_command(cohort_dir, out, cache)[1:]), "--force"])
        assert second.returncode == 2, second.stderr
        assert f"in use by process {process.pid}" in second.stderr
        assert len([line for line in second.stderr.splitlines() if line.strip()]) == 1
    finally:
        returncode = process.wait(timeout=300)
    assert returncode == 0, errors_of(process)
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    assert (out / "metrics.json").is_file()


# --------------------------------------------------------------------------- benchmarking
PLAN = """
name = "crash"
tasks = ["diagnosis"]
seeds = [0]
epochs = 8
n_boot = 50
patterns = "all"

[[models]]
model = "unimodal"
label = "clinical-only"
modalities = ["clinical"]

"""


def test_benchmark_killed_then_rerun_gives_the_same_results(cohort_dir, tmp_path):
    import pandas as pd

    rng = random.Random(SEED + 3)
    plan = tmp_path / "crash.toml"
    plan.write_text(PLAN)
    cache = tmp_path / "cache"

    def command(out: Path) -> list:
        return [ADFUSE, "benchmark", cohort_dir, "--plan", plan, "--out", out, "--workers", "1",
                "--cache", cache]  # fmt: skip

    whole = tmp_path / "whole"
    done = subprocess.run(
        [str(a) for a in command(whole)], capture_output=True, text=True, env=environment()
    )
    assert done.returncode == 0, done.stderr
    killed = tmp_path / "killed"
    # one run in the plan: killed during its training, a random time after its first epoch
    process = start(command(killed))
    assert kill_when(process, lambda: history_rows_any(killed), rng.uniform(0, 0.5))
    again = subprocess.run(
        [str(a) for a in command(killed)], capture_output=True, text=True, env=environment()
    )
    assert again.returncode == 0, again.stderr
    metrics = lambda root: {  # noqa: E731
        p.relative_to(root).as_posix(): p.read_text() for p in root.rglob("metrics.json")
    }
    assert metrics(killed) == metrics(whole) and len(metrics(whole)) == 1
    timing = ("second", "time", "energy", "kwh", "co2")
    a, b = (pd.read_csv(root / "leaderboard.csv") for root in (whole, killed))
    keep = [c for c in a.columns if not any(word in c.lower() for word in timing)]
    pd.testing.assert_frame_equal(a[keep], b[keep])


def history_rows_any(root: Path) -> bool:
    return any(len(p.read_text().splitlines()) > 1 for p in root.rglob("history.csv"))
