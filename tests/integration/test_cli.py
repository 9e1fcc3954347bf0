"""The adfuse command as a user runs it: exit codes, one-line errors, nothing half-written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny_dataset import write_tiny_dataset


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "adfuse.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("cli") / "dataset")


def test_help_imports_nothing_heavy():
    code = (
        "import sys, adfuse.cli\n"
        "heavy = [m for m in ('torch', 'pandas', 'sklearn', 'nibabel', 'monai', 'scipy') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
    assert run("--help").returncode == 0
    for command in ("synth", "info", "demo"):
        result = run(command, "--help")
        assert result.returncode == 0 and "Usage" in result.stdout


def test_info_prints_tables(tiny):
    result = run("info", str(tiny))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "4 subjects, 6 visits" in out
    assert "Availability patterns" in out and "clinical+genotype+t1+amyloid+fmri+notes" in out
    assert "diagnosis" in out and "smci_vs_pmci" in out


def test_info_on_bad_data_exits_3_with_one_line(tiny, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny, bad)
    path = bad / "ADNIMERGE.csv"
    path.write_text(path.read_text().replace(",Male,16,0,28,", ",Male,16,0,abc,"))
    result = run("info", str(bad))
    assert result.returncode == 3
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "ADNIMERGE.csv: subject 011_S_0002: MMSE:" in lines[0]
    assert "Traceback" not in result.stderr


def test_a_dataset_warning_is_one_line(tiny, tmp_path):
    extra = tmp_path / "extra"
    shutil.copytree(tiny, extra)
    (extra / "rawdata" / "sub-ADNI999S9999" / "ses-M000").mkdir(parents=True)
    result = run("info", str(extra))
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("warning: "), result.stderr
    assert "match no PTID" in lines[0] and "DatasetWarning" not in result.stderr


def test_debug_shows_the_traceback(tiny, tmp_path):
    result = run("--debug", "info", str(tmp_path / "missing"))
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_usage_errors_exit_2():
    assert run("info").returncode == 2
    assert run("no-such-command").returncode == 2
    assert run("synth", "x", "--subjects", "abc").returncode == 2


def test_unknown_task_is_a_usage_error_with_a_suggestion(tiny):
    result = run("info", str(tiny), "--task", "diagnosys")
    assert result.returncode == 2
    assert "did you mean 'diagnosis'" in result.stderr.lower()


def test_synth_refuses_a_non_empty_folder(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("do not touch")
    result = run("synth", str(out), "--subjects", "20")
    assert result.returncode == 2
    assert "--force" in result.stderr
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mine")]


def test_synth_plants_the_causal_snps_and_effects_asked_for(tmp_path):
    out = tmp_path / "strong"
    options = ["--subjects", "20", "--modalities", "clinical,genotype"]
    result = run("synth", str(out), *options, "--causal-snps", "5", "--causal-effect", "0.3,0.5")
    assert result.returncode == 0, result.stderr
    truth = json.loads((out / "truth.json").read_text())
    planted = [row for row in truth["genetics"]["causal_snps"] if row["gene"] != "APOE"]
    assert len(planted) == 5 and len({row["gene"] for row in planted}) == 5
    assert all(0.3 <= abs(row["beta"]) <= 0.5 for row in planted)
    config = truth["config"]
    assert (config["n_causal"], config["causal_effect_min"], config["causal_effect_max"]) == (
        5,
        0.3,
        0.5,
    )
    for bad, message in (
        (["--causal-effect", "0.5,0.3"], "--causal-effect '0.5,0.3': expected MIN,MAX"),
        (["--causal-effect", "0.3"], "expected MIN,MAX with 0 <= MIN <= MAX"),
        (["--causal-snps", "30"], "n_causal"),
    ):
        result = run("synth", str(tmp_path / "bad"), *options, *bad)
        assert result.returncode == 2
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], result.stderr
        assert not (tmp_path / "bad").exists()


def test_synth_then_info(tmp_path):
    out = tmp_path / "cohort"
    result = run("synth", str(out), "--subjects", "40", "--seed", "3")
    assert result.returncode == 0, result.stderr
    truth = json.loads((out / "truth.json").read_text())
    assert truth["seed"] == 3
    result = run("info", str(out), "--task", "diagnosis")
    assert result.returncode == 0, result.stderr
    assert "40 subjects" in result.stdout
