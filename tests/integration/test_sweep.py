"""The fraction sweep on a tiny tabular cohort: run folders, nested subsets, tables, resumption."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from adfuse import splits, sweep
from adfuse.errors import ConfigError
from adfuse.train import TrainConfig
from tests.unit.cohort_factory import sized_cohort

FRACTIONS = (0.4, 1.0)
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    cohort = sized_cohort(folder / "data", {"CN": 20, "MCI": 20, "AD": 20})
    config = TrainConfig.build(
        model="unimodal", modalities=["clinical"], epochs=2, n_boot=20, batch_size=16
    )
    out = folder / "out"
    table = sweep.sweep_fractions(
        cohort.root, config, FRACTIONS, SEEDS, out, cache_dir=folder / "cache", progress=False
    )
    return cohort, config, out, table


def test_one_complete_run_per_fraction_and_seed(swept):
    _, _, out, table = swept
    assert len(table) == 4
    for fraction in FRACTIONS:
        for seed in SEEDS:
            run = json.loads((out / f"unimodal-f{fraction:g}-s{seed}" / "run.json").read_text())
            assert run["status"] == "complete"
            assert (run["config"]["fraction"], run["config"]["seed"]) == (fraction, seed)


def test_smaller_fractions_are_nested_subsets_with_the_same_val_and_test(swept):
    _, _, out, table = swept
    for seed in SEEDS:
        small = splits.Split.load(out / f"unimodal-f0.4-s{seed}" / "split.json")
        full = splits.Split.load(out / f"unimodal-f1-s{seed}" / "split.json")
        assert set(small.train) < set(full.train)
        assert len(small.train) == pytest.approx(0.4 * len(full.train), abs=1)
        assert (small.val, small.test) == (full.val, full.test)
    sizes = table.groupby("fraction")["n_train"].first()
    assert sizes[0.4] < sizes[1.0]


def test_tables_hold_the_main_metric_with_ci_and_the_summary_across_seeds(swept):
    _, _, out, table = swept
    written = pd.read_csv(out / "fractions.csv")
    assert list(written.columns) == list(table.columns)
    assert set(written["metric"]) == {"balanced_accuracy"}
    assert (written["low"] <= written["value"]).all() and (
        written["value"] <= written["high"]
    ).all()
    metrics = json.loads((out / "unimodal-f1-s1" / "metrics.json").read_text())
    row = written[(written["fraction"] == 1.0) & (written["seed"] == 1)].iloc[0]
    assert row["value"] == pytest.approx(metrics["balanced_accuracy"]["value"])
    summary = pd.read_csv(out / "fractions_summary.csv")
    assert list(summary["fraction"]) == list(FRACTIONS)
    for _, line in summary.iterrows():
        values = written.loc[written["fraction"] == line["fraction"], "value"]
        assert line["n_seeds"] == 2
        assert line["median"] == pytest.approx(values.median())
        assert line["mean"] == pytest.approx(values.mean())
        assert line["p2_5"] == pytest.approx(values.quantile(0.025))
        assert line["p97_5"] == pytest.approx(values.quantile(0.975))
        assert line["p2_5"] <= line["median"] <= line["p97_5"]


def test_finished_runs_are_skipped_and_another_config_is_refused(swept, monkeypatch):
    cohort, config, out, table = swept

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(sweep, "fit", no_training)
    again = sweep.sweep_fractions(cohort.root, config, FRACTIONS, SEEDS, out, progress=False)
    pd.testing.assert_frame_equal(again, table)
    other = TrainConfig.build(**{**config.model_dump(), "epochs": 3})
    with pytest.raises(ConfigError, match="another config"):
        sweep.sweep_fractions(cohort.root, other, FRACTIONS, SEEDS, out, progress=False)


def test_bad_fractions_are_refused_before_any_training(tmp_path):
    config = TrainConfig.build(model="unimodal")
    with pytest.raises(ConfigError):
        sweep.sweep_fractions(tmp_path, config, (0.0, 0.5), (0,), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_sweep_command_trains_each_fraction_and_seed_then_resumes(swept, tmp_path):
    from typer.testing import CliRunner

    from adfuse.cli import app

    cohort = swept[0]
    out = tmp_path / "cli-sweep"
    args = ["sweep", str(cohort.root), "-m", "unimodal", "--modalities", "clinical"]
    args += ["--fractions", "0.5,1", "--seeds", "1", "--epochs", "1", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "balanced_accuracy across seeds" in result.output
    summary = pd.read_csv(out / "fractions_summary.csv")
    assert summary["fraction"].tolist() == [0.5, 1.0]
    assert (summary["n_seeds"] == 1).all()
    finished = {p: p.stat().st_mtime_ns for p in out.glob("*/metrics.json")}
    assert len(finished) == 2
    again = CliRunner().invoke(app, args)  # every run complete: nothing trains again
    assert again.exit_code == 0, again.output
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/metrics.json")} == finished


def test_the_sweep_command_refuses_a_bad_fraction_list(tmp_path):
    from typer.testing import CliRunner

    from adfuse.cli import app

    args = ["sweep", str(tmp_path), "-m", "unimodal", "--fractions", "0.2,half"]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, ConfigError)
    assert "--fractions" in str(result.exception)
