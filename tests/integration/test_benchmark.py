"""``adfuse benchmark`` on a tiny synthetic cohort (clinical + genotype): plans, run folders,
tables against the runs' own files, the oracle, resumption after a kill, escaping, Ray, and the
report in headless Chromium (Debian's ``chromium``, installed with apt-get when absent): it renders,
logs no console error (Chromium's ``--enable-logging=stderr`` prints every console message as a
``CONSOLE`` line; a control page with a script error shows the check sees errors), and a screenshot
is saved."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from adfuse import bench
from adfuse.bench import claims, oracle, plan, report, tables
from adfuse.errors import ConfigError

PLAN = """
name = "tiny"
description = "a note <script>alert('note')</script>"
seeds = [0, 1]
epochs = 2
n_boot = 50

[[models]]
model = "unimodal"
label = "clin"
modalities = ["clinical"]

[[models]]
model = "logreg"
modalities = ["clinical", "genotype"]

[[models]]
model = "early_fusion"
modalities = ["clinical", "genotype"]
ablations = { nodrop = { modality_dropout = 0.0 } }
"""


@pytest.fixture(scope="module")
def cohort_path(tmp_path_factory):
    from adfuse.data.synth import generate

    return generate(
        tmp_path_factory.mktemp("bench") / "data", n_subjects=90, seed=0, modalities=("genotype",)
    )


@pytest.fixture(scope="module")
def finished(cohort_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench-out")
    plan_file = folder / "tiny.toml"
    plan_file.write_text(PLAN)
    result = bench.run_benchmark(cohort_path, plan_file, folder / "out", workers=1)
    return result, folder / "out"


# ----------------------------------------------------------------------------- plans
def write(tmp_path: Path, text: str, name: str = "plan.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('models = ["unimodal"]\nepoch = 3\n', "unknown key 'epoch'"),
        ('[[models]]\nmodel = "unimodal"\noveride = {}\n', "unknown key 'models.0.overide'"),
        ('models = ["unimodel"]\n', "unknown model 'unimodel'. Did you mean 'unimodal'?"),
        ('models = ["unimodal"]\ntasks = ["diagnosys"]\n', "unknown task 'diagnosys'"),
        ('models = ["unimodal"]\nseeds = [0, 0]\n', "seeds must be distinct"),
        ('models = ["unimodal"]\nfractions = [1.5]\n', "fractions must be distinct, in (0, 1]"),
        (
            '[[models]]\nmodel = "smmt"\nablations = { x = { masking = "maybe" } }\n',
            "model smmt: masking",
        ),
        (
            '[[models]]\nmodel = "smmt"\nablations = { x = { maskin = false } }\n',
            "model smmt: unknown key 'maskin'",
        ),
        (
            '[[models]]\nmodel = "logreg"\n[[models]]\nmodel = "logreg"\n',
            "two rows are labelled 'logreg'",
        ),
        ("models = [\n", "not valid TOML"),
    ],
)
def test_plan_errors_are_one_line(tmp_path, text, message):
    with pytest.raises(ConfigError) as error:
        plan.expand(plan.load_plan(write(tmp_path, text)))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_yaml_plan_equals_the_toml_one(tmp_path):
    yaml_text = (
        "name: tiny\nseeds: [0, 1]\nmodels:\n  - unimodal\n  - model: logreg\n    epochs: 3\n"
    )
    toml_text = (
        'name = "tiny"\nseeds = [0, 1]\nmodels = ["unimodal", {model = "logreg", epochs = 3}]\n'
    )
    assert plan.load_plan(write(tmp_path, yaml_text, "p.yaml")) == plan.load_plan(
        write(tmp_path, toml_text)
    )


def test_star_expands_to_every_registered_model_and_skips_missing_paper_models(monkeypatch):
    from adfuse import models

    quick = plan.expand(plan.load_plan("quick"))
    assert {j.config.model for j in quick.jobs} == set(models.available())
    labels = [j.label for j in quick.jobs]
    assert len(labels) == len(set(labels))
    registered = [m for m in models.available() if m != "rgenima"]
    monkeypatch.setattr(models, "available", lambda kind=None: registered)
    reduced = plan.expand(plan.load_plan("quick"))
    assert "rgenima" in reduced.skipped and "not available" in reduced.skipped["rgenima"]
    assert "rgenima" not in {j.config.model for j in reduced.jobs}


@pytest.mark.parametrize("name", ["paper", "claims"])
def test_the_claim_plans_have_the_runs_of_every_claim(name):
    from types import SimpleNamespace

    from adfuse.models import make_config

    expanded = plan.expand(plan.load_plan(name), preset="cpu")
    for claim in claims.CLAIMS:
        for variant in [v for part in claim.parts for v in part]:
            matching = [
                job
                for job in expanded.jobs
                if job.config.model == variant.model
                and job.config.task == claim.task
                and job.config.fraction == claim.fraction
                and claims.matches(
                    SimpleNamespace(
                        model=job.config.model,
                        model_config=make_config(
                            job.config.model, "cpu", **job.config.overrides
                        ).model_dump(mode="json"),
                    ),
                    variant,
                    "cpu",
                )
            ]
            seeds = {job.config.seed for job in matching}
            assert len(seeds) >= claims.MIN_SEEDS, (claim.id, variant)
    assert any(job.explain for job in expanded.jobs if job.config.model == "rgenima")


# ----------------------------------------------------------------------------- the outputs
def test_every_job_is_a_complete_run_folder(finished):
    result, out = finished
    assert set(result.jobs["status"]) == {"complete"}
    names = json.loads((out / "plan.json").read_text())["jobs"]
    assert len(names) == 8  # 4 rows x 2 seeds
    for job in names:
        run = json.loads((out / "runs" / job["name"] / "run.json").read_text())
        assert run["status"] == "complete"
    nodrop = json.loads(
        (out / "runs" / "early_fusion-nodrop-diagnosis-f1-s1" / "run.json").read_text()
    )
    assert nodrop["model_config"]["modality_dropout"] == 0.0
    for name in ("leaderboard.csv", "leaderboard_patterns.csv", "comparisons.csv", "claims.csv"):
        assert (out / name).stat().st_size > 0
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary file


def test_leaderboard_is_the_mean_and_t_interval_of_the_runs(finished):
    _, out = finished
    board = pd.read_csv(out / "leaderboard.csv").set_index("label")
    assert set(board.index) == {"clin", "logreg", "early_fusion", "early_fusion-nodrop", "oracle"}
    values = [
        json.loads((out / "runs" / f"clin-diagnosis-f1-s{s}" / "metrics.json").read_text())[
            "balanced_accuracy"
        ]["value"]
        for s in (0, 1)
    ]
    mean, low, high = tables.mean_ci(values)
    row = board.loc["clin"]
    assert row["balanced_accuracy"] == pytest.approx(mean)
    assert row["balanced_accuracy_low"] == pytest.approx(max(low, 0))
    assert row["balanced_accuracy_high"] == pytest.approx(min(high, 1))
    efficiency = json.loads((out / "runs" / "clin-diagnosis-f1-s0" / "efficiency.json").read_text())
    assert row["parameters"] == efficiency["parameters_total"]
    assert np.isnan(board.loc["logreg", "parameters"])  # a classical model has no parameter count


def test_oracle_row_is_scored_on_the_runs_test_subjects(finished, cohort_path):
    from adfuse import tasks
    from adfuse.data.cohort import load_cohort

    _, out = finished
    board = pd.read_csv(out / "leaderboard.csv").set_index("label")
    truth = oracle.load_truth(cohort_path)
    labels = tasks.get("diagnosis").targets(load_cohort(cohort_path))["target"]
    prior = np.bincount(labels, minlength=3) / len(labels)
    expected, gaps = [], []
    for seed in (0, 1):
        run = out / "runs" / f"clin-diagnosis-f1-s{seed}"
        test = pd.read_csv(run / "predictions" / "test.csv", dtype={"id": str})
        score = oracle.oracle_scores(
            truth,
            "diagnosis",
            list(test["id"]),
            test["target"].to_numpy(),
            ["CN", "MCI", "AD"],
            prior,
        )["balanced_accuracy"]
        expected.append(score)
        model = json.loads((run / "metrics.json").read_text())["balanced_accuracy"]["value"]
        gaps.append(score - model)
    assert board.loc["oracle", "balanced_accuracy"] == pytest.approx(np.mean(expected))
    assert board.loc["clin", "gap_to_oracle"] == pytest.approx(np.mean(gaps))
    assert (
        board.loc["oracle", "balanced_accuracy"] > board.drop("oracle")["balanced_accuracy"].max()
    )


def test_comparisons_are_paired_and_holm_corrected(finished):
    _, out = finished
    table = pd.read_csv(out / "comparisons.csv")
    assert len(table) == 6  # 4 rows: every pair once
    assert (table["n_seeds"] == 2).all()
    assert table["p_holm"].to_numpy() == pytest.approx(tables.holm(table["p_value"].to_numpy()))
    assert (table["p_holm"] >= table["p_value"]).all()
    assert (table["low"] <= table["difference"] + 1e-9).all()
    assert (table["difference"] <= table["high"] + 1e-9).all()


def test_patterns_and_claims_tables(finished):
    _, out = finished
    patterns = pd.read_csv(out / "leaderboard_patterns.csv")
    logreg = patterns[patterns["label"] == "logreg"]
    assert set(logreg["pattern"]) == {"clinical+genotype", "clinical", "genotype"}
    claims_table = pd.read_csv(out / "claims.csv")
    assert list(claims_table["id"]) == [c.id for c in claims.CLAIMS]
    assert set(claims_table["verdict"]) == {"inconclusive"}  # this plan has none of their runs
    assert claims_table["reason"].str.len().min() > 0


def test_report_is_self_contained_and_escapes_user_text(finished):
    result, out = finished
    page = result.report.read_text()
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#x27;note&#x27;)&lt;/script&gt;" in page
    assert not re.search(r"(src|href)=\"(?!data:)", page)  # nothing loaded from elsewhere
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) >= 4
    assert all(base64.b64decode(i).startswith(b"\x89PNG\r\n\x1a\n") for i in images)
    for heading in ("Leaderboard", "Claims", "availability patterns", "calibration", "confusion"):
        assert heading.lower() in page.lower()


def test_figures_folder_holds_the_pages_figures_as_png_files(finished):
    result, out = finished
    page = result.report.read_text()
    shown = [base64.b64decode(i) for i in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]
    files = sorted((out / "figures").iterdir())
    assert [f.read_bytes() for f in files] == shown  # every figure, in page order
    names = [f.name for f in files]
    assert all(re.fullmatch(r"\d{2}-[A-Za-z0-9._-]+\.png", n) for n in names), names
    assert any("calibration-diagnosis" in n for n in names)
    assert any("confusion-diagnosis" in n for n in names)
    assert not [p for p in out.iterdir() if p.name.startswith(".figures")]  # no temporary left


def test_a_subject_id_with_markup_is_escaped(finished):
    _, out = finished
    expanded = plan.expand(plan.load_plan(out.parent / "tiny.toml"))
    records = [tables.read_record(j, out / "runs" / j.name) for j in expanded.jobs]
    evil = "<script>alert('id')</script>"
    for record in records:
        record.predictions.index = [
            evil if i == record.predictions.index[0] else i for i in record.predictions.index
        ]
        record.predictions["target"] = 0
        record.predictions.iloc[0, record.predictions.columns.get_loc("prob_AD")] = 5.0
    page = report.render(
        plan.load_plan(out.parent / "tiny.toml"),
        tables.leaderboard(records),
        tables.pattern_table(records),
        tables.leaderboard(records),
        pd.DataFrame(),
        pd.DataFrame(),
        records,
        pd.DataFrame(columns=["run", "status", "error"]),
        {"<b>model</b>": "left out <i>why</i>"},
        "<dataset>",
    )
    assert "<script" not in page and "<b>model" not in page and "<dataset>" not in page
    assert "&lt;script&gt;alert(&#x27;id&#x27;)&lt;/script&gt;" in page  # listed, escaped


def test_a_second_call_skips_every_finished_run(finished, cohort_path):
    _, out = finished
    run_json = out / "runs" / "clin-diagnosis-f1-s0" / "run.json"
    before = run_json.stat().st_mtime_ns
    again = bench.run_benchmark(cohort_path, out.parent / "tiny.toml", out, workers=1)
    assert set(again.jobs["status"]) == {"skipped"}
    assert run_json.stat().st_mtime_ns == before
    pd.testing.assert_frame_equal(
        again.leaderboard, pd.read_csv(out / "leaderboard.csv"), check_dtype=False
    )


KILL_PLAN = """
name = "kill"
seeds = [0, 1, 2, 3, 4]
epochs = 10
patience = 10
n_boot = 20
patterns = ["clinical"]
[[models]]
model = "unimodal"
modalities = ["clinical"]
"""


def test_a_killed_benchmark_continues(cohort_path, tmp_path):
    plan_file = write(tmp_path, KILL_PLAN)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "adfuse.cli", "benchmark", str(cohort_path), "--plan",
               str(plan_file), "--out", str(out), "--workers", "1"]  # fmt: skip
    process = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    first = out / "runs" / "unimodal-diagnosis-f1-s0" / "run.json"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if first.exists() and json.loads(first.read_text()).get("status") == "complete":
                break
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert json.loads(first.read_text())["status"] == "complete", "the first run never finished"
    assert not (out / "leaderboard.csv").exists()  # killed before the tables
    finished_before = first.stat().st_mtime_ns
    result = bench.run_benchmark(cohort_path, plan_file, out, workers=1)
    status = dict(zip(result.jobs["run"], result.jobs["status"], strict=True))
    assert status["unimodal-diagnosis-f1-s0"] == "skipped"
    assert set(status.values()) <= {"skipped", "complete"}
    assert first.stat().st_mtime_ns == finished_before
    assert sum(v == "complete" for v in status.values()) >= 1  # the kill left work to do
    assert len(pd.read_csv(out / "leaderboard.csv")) == 2  # unimodal and the oracle


def test_ray_backend_on_a_local_instance(cohort_path, tmp_path):
    pytest.importorskip("ray")
    plan_file = write(
        tmp_path,
        'name = "ray"\nseeds = [0, 1]\nepochs = 1\nn_boot = 20\n'
        '[[models]]\nmodel = "unimodal"\nmodalities = ["clinical"]\n',
    )
    result = bench.run_benchmark(cohort_path, plan_file, tmp_path / "out", backend="ray", workers=2)
    assert set(result.jobs["status"]) == {"complete"}
    assert (tmp_path / "out" / "runs" / "unimodal-diagnosis-f1-s1" / "metrics.json").exists()
    assert len(result.leaderboard) == 2


def test_cli_benchmark_reports_a_bad_plan_in_one_line(cohort_path, tmp_path):
    from typer.testing import CliRunner

    from adfuse.cli import app, main

    plan_file = write(tmp_path, 'models = ["unimodal"]\nworkers = 2\n')
    command = [
        sys.executable,
        "-m",
        "adfuse.cli",
        "benchmark",
        str(cohort_path),
        "--plan",
        str(plan_file),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "unknown key 'workers'" in done.stderr
    assert main is not None
    assert "--backend" in CliRunner().invoke(app, ["benchmark", "--help"]).output


# ----------------------------------------------------------------------------- Chromium
CHROMIUM = "chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
)


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of Debian's chromium; installed with apt-get (as root) when it is missing."""
    found = shutil.which(CHROMIUM)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail("chromium is missing: install it with `apt-get install -y chromium` (as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", CHROMIUM]):
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}")
    return shutil.which(CHROMIUM) or pytest.fail("chromium is still missing after apt-get")


def open_page(chromium: str, page: Path, screenshot: Path, size: str = "1200,1800") -> list[str]:
    """Render ``page`` to ``screenshot``; returns the console lines Chromium logged."""
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [
                chromium,
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={size}",
                f"--screenshot={screenshot}",
                page.resolve().as_uri(),
            ],  # fmt: skip
            capture_output=True,
            text=True,
            timeout=120,
        )
    return [line for line in done.stderr.splitlines() if ":CONSOLE" in line]


def test_the_console_check_sees_a_script_error(chromium, tmp_path):
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><body><p>x</p><script>missing_function();</script></body></html>"
    )
    console = open_page(chromium, page, tmp_path / "broken.png", "400,300")
    assert any("Uncaught ReferenceError" in line for line in console)


def test_report_renders_in_chromium_without_console_errors(chromium, finished, tmp_path):
    screenshot = tmp_path / "report.png"
    console = open_page(chromium, finished[0].report, screenshot)
    assert console == []
    data = screenshot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000  # a page, not a blank
