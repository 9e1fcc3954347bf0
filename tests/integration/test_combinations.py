"""The 15-combination comparison (``adfuse combinations``) and the expert-activation explainer, on
the small synthetic cohort with one epoch and two seeds."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from adfuse import combinations
from adfuse.errors import ConfigError
from adfuse.explain import explain_run
from adfuse.train import TrainConfig

MODELS = ("permoe", "flexmoe")
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def compared(synth_small, tmp_path_factory):
    folder = tmp_path_factory.mktemp("combinations")
    config = TrainConfig.build(model="permoe", task="progression", epochs=1, n_boot=20)
    result = combinations.compare_combinations(
        synth_small,
        config,
        MODELS,
        SEEDS,
        folder / "out",
        cache_dir=folder / "cache",
        progress=False,
        n_boot=20,
    )
    return synth_small, config, folder, result


def test_every_model_seed_is_a_run_and_every_combination_a_row(compared):
    _, _, folder, result = compared
    out = folder / "out"
    for model in MODELS:
        for seed in SEEDS:
            run = json.loads((out / "runs" / f"{model}-s{seed}" / "run.json").read_text())
            assert run["status"] == "complete"
            assert run["modalities"][0] == "clinical"
            assert set(run["modalities"][1:]) == {"t1", "flair", "amyloid", "tau"}
    table = pd.read_csv(out / "combinations.csv")
    assert len(table) == 2 * 15
    assert table.groupby("model")["combination"].nunique().tolist() == [15, 15]
    observed = table.dropna(subset=["rmse"])
    assert (observed["rmse_low"] <= observed["rmse"]).all()
    assert (observed["rmse"] <= observed["rmse_high"]).all()
    assert {"rmse_le0", "rmse_0to1", "rmse_gt1", "n_le0", "rmse_seed_sd"} <= set(table.columns)
    assert (out / "combinations.png").stat().st_size > 10_000


def test_forced_combinations_withhold_the_other_images(compared):
    dataset, _, folder, _ = compared
    predictions = pd.read_csv(folder / "out" / "predictions.csv")
    # the same subjects for both models (the split depends on the seed only) ...
    keys = predictions.groupby("model").apply(
        lambda g: sorted(zip(g["seed"], g["combination"], g["id"], strict=True)),
        include_groups=False,
    )
    assert keys["permoe"] == keys["flexmoe"]
    # ... and the subjects of "t1" are all test subjects with a T1, even those with more images
    from adfuse import load_cohort

    cohort = load_cohort(dataset)
    for seed in SEEDS:
        split = json.loads((folder / "out" / "runs" / f"permoe-s{seed}" / "split.json").read_text())
        with_t1 = {i for i in split["test"] if cohort.availability.at[i, "t1"]}
        chosen = predictions[
            (predictions["model"] == "permoe")
            & (predictions["seed"] == seed)
            & (predictions["combination"] == "t1")
        ]
        assert set(chosen["id"]) == with_t1
    both = predictions[predictions["model"] == "permoe"].pivot_table(
        index=["seed", "id"], columns="combination", values="prediction"
    )
    pair = both.dropna(subset=["t1", "t1+flair"])  # withholding FLAIR changes the predictions
    assert len(pair) and not np.allclose(pair["t1"], pair["t1+flair"])


def test_comparison_counts_wins_and_relative_changes(compared):
    _, _, folder, result = compared
    comparison = pd.read_csv(folder / "out" / "comparison.csv")
    summary = json.loads((folder / "out" / "summary.json").read_text())
    wins = summary["wins"]
    assert wins["permoe"] == int((comparison["better"] == "permoe").sum())
    assert wins["permoe"] + wins["flexmoe"] <= wins["compared"] <= 15
    row = comparison.dropna(subset=["rmse_change_pct"]).iloc[0]
    expected = 100 * (row["rmse_permoe"] - row["rmse_flexmoe"]) / row["rmse_flexmoe"]
    assert row["rmse_change_pct"] == pytest.approx(expected)
    assert set(summary["single_image_change_pct"]) == {"t1", "flair", "amyloid", "tau"}
    assert set(summary["mean_bin_change_pct"]) == {"le0", "0to1", "gt1"}


def test_the_command_reuses_finished_runs_and_prints_the_table(compared):
    dataset, _, folder, _ = compared
    out = folder / "out"
    weights = out / "runs" / "permoe-s0" / "checkpoints" / "best.safetensors"
    before = weights.stat().st_mtime_ns
    from typer.testing import CliRunner

    from adfuse.cli import app

    arguments = ["combinations", str(dataset), "--seeds", "2", "--epochs", "1", "--n-boot", "20"]
    arguments += ["--out", str(out), "--cache", str(folder / "cache")]
    done = CliRunner().invoke(app, arguments, env={"COLUMNS": "160"})
    assert done.exit_code == 0, done.output
    assert "permoe better than flexmoe in" in done.output
    assert "t1+flair+amyloid+tau" in done.output
    assert weights.stat().st_mtime_ns == before  # reused, not retrained


def test_a_classification_task_is_refused(compared):
    dataset, _, folder, _ = compared
    config = TrainConfig.build(model="permoe", task="diagnosis", epochs=1)
    with pytest.raises(ConfigError, match="progression"):
        combinations.compare_combinations(dataset, config, MODELS, SEEDS, folder / "refused")
    assert not (folder / "refused").exists()


@pytest.mark.parametrize("model", MODELS)
def test_explain_writes_the_expert_activation_heat_map(compared, model):
    _, _, folder, _ = compared
    run = folder / "out" / "runs" / f"{model}-s0"
    explained = explain_run(run, cache_dir=folder / "cache", out=folder / f"explain-{model}")
    overall = np.load(explained / "expert_activation.npy")
    by_modality = np.load(explained / "expert_activation_by_modality.npy")
    assert overall.shape == (15, 16)
    assert by_modality.shape[0] == 15 and by_modality.shape[2] == 16
    seen = ~np.isnan(overall).any(axis=1)
    assert seen.any()
    np.testing.assert_allclose(overall[seen].sum(axis=1), 1.0, rtol=1e-5)  # shares of experts
    table = pd.read_csv(explained / "expert_activation.csv")
    assert list(table["combination"])[0] == "t1+flair+amyloid+tau"
    assert (explained / "expert_activation.png").stat().st_size > 10_000
    summary = json.loads((explained / "summary.json").read_text())
    assert summary["model"] == model and summary["experts"] == 16
