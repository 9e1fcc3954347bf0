"""What a crash or a second process must never leave or break: temporaries of killed processes are
cleaned by the next write, an explanation lands whole or not at all, a run folder's lock is held by
one process at a time, and written files get the mode the umask gives (not mkstemp's 0600)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import adfuse
from adfuse.errors import ConfigError
from adfuse.io import (
    atomic_directory,
    atomic_target,
    atomic_write_text,
    file_lock,
    remove_stale_temporaries,
)
from adfuse.runs import LOCK_FILE, locked

SOURCE = Path(adfuse.__file__).resolve().parents[1]  # for the subprocesses: the adfuse tested


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def live_pid():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process.pid
    process.kill()
    process.wait()


# --------------------------------------------------------------------------- stale temporaries
def test_synth_removes_what_a_killed_synth_left_in_the_parent(tmp_path, dead_pid, live_pid):
    from adfuse.data.synth import generate

    stale = tmp_path / f".other.tmp-{dead_pid}-abc123_x"  # any synth's, of a dead process
    (stale / "rawdata").mkdir(parents=True)
    (stale / "ADNIMERGE.csv").write_text("RID\n")
    running = tmp_path / f".cohort.tmp-{live_pid}-def456"  # a synth still writing: kept
    running.mkdir()
    unrelated = tmp_path / ".cohort.tmp-notes"  # not one of adfuse's temporaries: kept
    unrelated.mkdir()
    generate(tmp_path / "cohort", n_subjects=20, seed=0, modalities=("clinical",))
    assert not stale.exists()
    assert running.is_dir() and unrelated.is_dir()
    assert (tmp_path / "cohort" / "ADNIMERGE.csv").is_file()
    hidden = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert hidden == sorted([running.name, unrelated.name])


def test_a_file_write_removes_its_own_stale_temporaries_only(tmp_path, dead_pid):
    left = tmp_path / f".metrics.json.tmp-{dead_pid}-k2j4h5g6"  # a killed write of this file
    left.write_text("{")
    other = tmp_path / f".history.csv.tmp-{dead_pid}-k2j4h5g6"  # of another file: its own write
    other.write_text("epoch")
    atomic_write_text(tmp_path / "metrics.json", "{}\n")
    assert not left.exists() and other.exists()
    assert (tmp_path / "metrics.json").read_text() == "{}\n"
    with atomic_target(tmp_path / "history.csv") as temporary:
        assert temporary.parent.name.startswith(f".history.csv.tmp-{os.getpid()}-")
        temporary.write_text("epoch\n")
    assert not other.exists() and (tmp_path / "history.csv").read_text() == "epoch\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv", "metrics.json"]


def test_what_a_writer_makes_beside_its_file_never_stays(tmp_path, dead_pid):
    """safetensors writes its own ``.tmp<random>`` next to the file it is given and renames it: a
    kill in between left it in checkpoints/ (tests/reliability/test_crash.py saw one). The writer
    now works inside a temporary folder of ours, which a failure removes, and a later write of the
    same file removes when its process is dead."""
    with pytest.raises(RuntimeError), atomic_target(tmp_path / "best.safetensors") as temporary:
        (temporary.parent / ".tmpAbC123").write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []
    killed = tmp_path / f".best.safetensors.tmp-{dead_pid}-k2j4h5g6"  # a SIGKILLed write
    killed.mkdir()
    (killed / ".tmpXyZ789").write_bytes(b"half")
    with atomic_target(tmp_path / "best.safetensors") as temporary:
        temporary.write_bytes(b"whole")
    assert [p.name for p in tmp_path.iterdir()] == ["best.safetensors"]


def test_a_folder_killed_between_its_two_renames_gets_its_old_content_back(tmp_path, dead_pid):
    """atomic_directory moves the old folder aside, then the new one in: a kill between the two
    leaves the old one in an .old- temporary; the next write puts it back instead of deleting it."""
    retired = tmp_path / f".dataset.old-{dead_pid}-q1w2e3r4"
    (retired / "old").mkdir(parents=True)
    (retired / "old" / "ADNIMERGE.csv").write_text("kept")
    (tmp_path / f".dataset.tmp-{dead_pid}-t5y6u7i8").mkdir()  # the complete new one, unused
    remove_stale_temporaries(tmp_path)
    assert (tmp_path / "dataset" / "ADNIMERGE.csv").read_text() == "kept"
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"]


# --------------------------------------------------------------------------- explain
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    from adfuse.train import TrainConfig, fit
    from tests.reliability.helpers import imaged_cohort

    root = tmp_path_factory.mktemp("explain")
    cohort = imaged_cohort(root / "cohort")
    config = TrainConfig(
        model="early_fusion", modalities=["clinical"], epochs=1, n_boot=10, patterns=False
    )
    return fit(cohort, config, root / "run", cache_dir=root / "cache", progress=False)


@pytest.fixture
def explainer(monkeypatch):
    """A stand-in explainer for the run's model: writes two files, or fails after the first."""
    from adfuse import explain

    calls = {"fail": False}

    def fake(session, out_dir: Path, **options) -> dict:
        (out_dir / "first.csv").write_text("a\n")
        if calls["fail"]:
            raise RuntimeError("killed half-way")
        (out_dir / "second.png").write_bytes(b"png")
        return {"files": ["first.csv", "second.png"]}

    monkeypatch.setattr(explain, "_load_all", lambda: None)
    monkeypatch.setitem(explain._EXPLAINERS, "early_fusion", fake)
    return calls


def test_explain_writes_a_whole_folder_or_nothing(finished_run, explainer):
    from adfuse.explain import explain_run

    out = finished_run / "explain"
    explainer["fail"] = True
    with pytest.raises(RuntimeError, match="killed half-way"):
        explain_run(finished_run)
    assert not out.exists()
    assert not [p for p in finished_run.iterdir() if ".tmp-" in p.name]
    explainer["fail"] = False
    assert explain_run(finished_run) == out
    assert sorted(p.name for p in out.iterdir()) == ["first.csv", "second.png", "summary.json"]


def test_explain_replaces_an_explanation_only_with_force_and_only_when_complete(
    finished_run, explainer, tmp_path
):
    from adfuse.explain import explain_run

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    with pytest.raises(ConfigError, match="not empty; pass --force"):
        explain_run(finished_run, out=out)
    explainer["fail"] = True
    with pytest.raises(RuntimeError):
        explain_run(finished_run, out=out, force=True)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]  # the old folder as it was
    explainer["fail"] = False
    explain_run(finished_run, out=out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["first.csv", "second.png", "summary.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]


# --------------------------------------------------------------------------- the run lock
LOCKER = r"""
import os, sys, time
from pathlib import Path
from adfuse.errors import ConfigError
from adfuse.runs import locked

folder, log, start = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
while time.time() < start:
    time.sleep(0.001)
held = 0
while held < 25:
    try:
        with locked(folder):
            with open(log, "a") as stream:
                stream.write(f"in {os.getpid()}\n")
            time.sleep(0.001)
            with open(log, "a") as stream:
                stream.write(f"out {os.getpid()}\n")
        held += 1
    except ConfigError:
        pass
"""


def test_a_run_folder_is_never_held_by_two_processes(tmp_path):
    """Processes hammer one run folder's lock (a lock file left by a dead process at the start);
    the log of who is inside shows one process at a time."""
    folder, log = tmp_path / "run", tmp_path / "log"
    folder.mkdir()
    (folder / LOCK_FILE).write_text("999999999")  # a holder long gone
    start = time.time() + 1.5
    env = {**os.environ, "PYTHONPATH": str(SOURCE)}
    processes = [
        subprocess.Popen([sys.executable, "-c", LOCKER, folder, log, str(start)], env=env)
        for _ in range(4)
    ]
    assert all(p.wait(timeout=120) == 0 for p in processes)
    lines = log.read_text().splitlines()
    assert len(lines) == 4 * 25 * 2
    for entered, left in zip(lines[::2], lines[1::2], strict=True):
        assert entered.startswith("in ") and left == "out" + entered[2:], (entered, left)
    assert not (folder / LOCK_FILE).exists()


def test_a_held_run_folder_is_refused_naming_its_holder_and_free_once_it_dies(tmp_path, live_pid):
    folder = tmp_path / "run"
    with locked(folder):
        script = (
            "import sys, pathlib, adfuse.runs as r; r.locked(pathlib.Path(sys.argv[1])).__enter__()"
        )
        env = {**os.environ, "PYTHONPATH": str(SOURCE)}
        other = subprocess.run(
            [sys.executable, "-c", script, folder], env=env, capture_output=True, text=True
        )
        assert other.returncode != 0 and f"in use by process {os.getpid()}" in other.stderr
    # a lock file naming a live process that does not hold the lock (a pid reused after a kill)
    (folder / LOCK_FILE).write_text(str(live_pid))
    with locked(folder):
        assert (folder / LOCK_FILE).read_text() == str(os.getpid())
    with file_lock(folder / LOCK_FILE):  # released: free for anyone
        pass


# --------------------------------------------------------------------------- file modes
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_and_folders_get_the_umask_mode(tmp_path, umask):
    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        with atomic_target(tmp_path / "b.safetensors") as temporary:
            temporary.write_bytes(b"x")
        with atomic_directory(tmp_path / "folder") as building:
            (building / "c.csv").write_text("c")
    finally:
        os.umask(previous)
    mode = lambda path: stat.S_IMODE(path.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "a.json") == mode(tmp_path / "b.safetensors") == 0o666 & ~umask
    assert mode(tmp_path / "folder") == 0o777 & ~umask
