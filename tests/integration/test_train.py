"""The engine end to end on a small tabular cohort: run folder, determinism, resume after kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from adfuse import splits
from adfuse.errors import ConfigError, TrainingDivergedError
from adfuse.train import TrainConfig, fit, predict_dataset
from tests.unit.cohort_factory import sized_cohort

RUN_FILES = (
    "run.json",
    "split.json",
    "preprocessing.json",
    "history.csv",
    "metrics.json",
    "predictions/test.csv",
    "patterns.csv",
    "efficiency.json",
    "checkpoints/best.safetensors",
    "checkpoints/last.safetensors",
)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return sized_cohort(tmp_path_factory.mktemp("train"), {"CN": 30, "MCI": 30, "AD": 30})


def config(**values) -> TrainConfig:
    defaults = dict(model="unimodal", modalities=["clinical"], epochs=4, n_boot=50, batch_size=16)
    return TrainConfig.build(**{**defaults, **values})


def test_run_folder(cohort, tmp_path):
    run = fit(cohort.root, config(), tmp_path / "run", cache_dir=tmp_path / "cache", progress=False)
    for name in RUN_FILES:
        assert (run / name).exists(), name
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["model"] == "unimodal"
    assert info["dataset"]["fingerprint"]["n_subjects"] == 90
    assert "torch" in info["versions"]
    split = splits.Split.load(run / "split.json")
    splits.check_disjoint(split)
    metrics = json.loads((run / "metrics.json").read_text())
    accuracy = metrics["balanced_accuracy"]
    assert accuracy["low"] <= accuracy["value"] <= accuracy["high"]
    predictions = pd.read_csv(run / "predictions" / "test.csv")
    assert sorted(predictions["id"]) == sorted(split.test)
    assert {"prob_CN", "prob_MCI", "prob_AD"} <= set(predictions.columns)
    history = pd.read_csv(run / "history.csv")
    assert len(history) == 4 and history["train_loss"].notna().all()
    efficiency = json.loads((run / "efficiency.json").read_text())
    assert efficiency["parameters_total"] > 0 and "energy" in efficiency
    prediction = predict_dataset(run, cohort.root, cache_dir=tmp_path / "cache")
    assert len(prediction) == 90 and prediction["predicted"].isin(["CN", "MCI", "AD"]).all()


def test_same_seed_same_result(cohort, tmp_path):
    first = fit(cohort.root, config(), tmp_path / "a", cache_dir=tmp_path / "cache", progress=False)
    second = fit(
        cohort.root, config(), tmp_path / "b", cache_dir=tmp_path / "cache", progress=False
    )
    assert (first / "metrics.json").read_text() == (second / "metrics.json").read_text()
    a, b = (load_file(p / "checkpoints" / "best.safetensors") for p in (first, second))
    assert all((a[k] == b[k]).all() for k in a)
    other = fit(
        cohort.root, config(seed=1), tmp_path / "c", cache_dir=tmp_path / "cache", progress=False
    )
    assert (
        json.loads((other / "split.json").read_text())["test"]
        != json.loads((first / "split.json").read_text())["test"]
    )


def test_refuses_to_overwrite_and_to_resume_another_config(cohort, tmp_path):
    out = tmp_path / "run"
    fit(cohort.root, config(epochs=1), out, cache_dir=tmp_path / "cache", progress=False)
    with pytest.raises(ConfigError, match="--force"):
        fit(cohort.root, config(epochs=1), out, cache_dir=tmp_path / "cache", progress=False)
    with pytest.raises(ConfigError, match=r"different config \(epochs: 1 then, 2 now\)"):
        fit(cohort.root, config(epochs=2), out, resume=True, cache_dir=tmp_path / "cache")
    fit(
        cohort.root, config(epochs=2), out, force=True, cache_dir=tmp_path / "cache", progress=False
    )
    assert json.loads((out / "run.json").read_text())["config"]["epochs"] == 2


def _train_command(dataset: Path, out: Path, cache: Path, epochs: int) -> list[str]:
    return [
        sys.executable, "-m", "adfuse.cli", "train", str(dataset), "--model", "early_fusion",
        "--modalities", "clinical", "--epochs", str(epochs), "--out", str(out), "--cache", str(cache),
        "--batch-size", "4",
    ]  # fmt: skip


def test_resume_after_kill_gives_the_same_result(cohort, tmp_path):
    """kill -9 in the middle of training, --resume, and compare with an uninterrupted run."""
    epochs = 60
    env = dict(os.environ)
    whole = tmp_path / "whole"
    subprocess.run(
        _train_command(cohort.root, whole, tmp_path / "c", epochs) + ["--seed", "0"],
        check=True,
        env=env,
        capture_output=True,
    )
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        _train_command(cohort.root, killed, tmp_path / "c", epochs) + ["--seed", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    history = killed / "history.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if history.exists() and len(history.read_text().splitlines()) > 3:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert json.loads((killed / "run.json").read_text())["status"] == "training"
    resumed = subprocess.run(
        _train_command(cohort.root, killed, tmp_path / "c", epochs) + ["--seed", "0", "--resume"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert (killed / "metrics.json").read_text() == (whole / "metrics.json").read_text()
    a, b = (load_file(p / "checkpoints" / "best.safetensors") for p in (whole, killed))
    assert all((a[k] == b[k]).all() for k in a)
    assert (
        pd.read_csv(killed / "history.csv")["val_loss"].tolist()
        == pd.read_csv(whole / "history.csv")["val_loss"].tolist()
    )


def test_classical_model_runs_through_the_same_engine(cohort, tmp_path):
    run = fit(
        cohort.root,
        config(model="logreg", modalities=None),
        tmp_path / "lr",
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["balanced_accuracy"]["value"] > 0.4  # 3 classes: chance is 1/3
    assert not (run / "history.csv").exists()  # nothing epoch-wise to log
    # restored by refitting on the same training subjects and seed: same predictions
    first = pd.read_csv(run / "predictions" / "test.csv")
    again = predict_dataset(run, cohort.root, cache_dir=tmp_path / "cache").set_index("id")
    for _, row in first.iterrows():
        assert again.loc[row["id"], "prob_AD"] == pytest.approx(row["prob_AD"], abs=1e-6)


def test_predict_refuses_a_dataset_with_another_spec(cohort, tmp_path):
    import shutil

    run = fit(
        cohort.root,
        config(epochs=1),
        tmp_path / "run",
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    other = tmp_path / "other"
    shutil.copytree(cohort.root, other)
    table = pd.read_csv(other / "ADNIMERGE.csv", dtype=str, keep_default_na=False)
    table.drop(columns=["ADAS13"]).to_csv(other / "ADNIMERGE.csv", index=False)
    with pytest.raises(
        ConfigError, match=r"clinical feature names differ from the run's .*missing \['ADAS13'\]"
    ):
        predict_dataset(run, other, cache_dir=tmp_path / "cache")


def test_cli_evaluate_and_predict(cohort, tmp_path):
    run = tmp_path / "run"
    cli = [sys.executable, "-m", "adfuse.cli"]
    common = ["--modalities", "clinical", "--epochs", "2", "--cache", str(tmp_path / "cache")]
    result = subprocess.run(
        [*cli, "train", str(cohort.root), "--model", "unimodal", "--out", str(run), *common],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "balanced_accuracy" in result.stdout
    before = json.loads((run / "metrics.json").read_text())
    result = subprocess.run(
        [*cli, "evaluate", str(run), "--cache", str(tmp_path / "cache")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((run / "metrics.json").read_text()) == before
    out = tmp_path / "preds.csv"
    result = subprocess.run(
        [
            *cli,
            "predict",
            str(run),
            str(cohort.root),
            "--out",
            str(out),
            "--cache",
            str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert len(pd.read_csv(out)) == 90
    again = subprocess.run(
        [*cli, "predict", str(run), str(cohort.root), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 2 and "--force" in again.stderr
    bad = subprocess.run(
        [*cli, "train", str(cohort.root), "--model", "unimodl", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "Did you mean 'unimodal'" in bad.stderr
    assert len([line for line in bad.stderr.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "x").exists()
    bad = subprocess.run(
        [
            *cli,
            "train",
            str(cohort.root),
            "--model",
            "unimodal",
            "--modalities",
            "tau",
            "--out",
            str(tmp_path / "y"),
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "'tau' is not in this dataset" in bad.stderr
    assert not (tmp_path / "y").exists()


def _nan_when_validating(monkeypatch) -> None:
    """Every model's task loss is NaN in eval mode (validation) and as usual in training."""
    from adfuse.models.base import AdfuseModel

    task_loss = AdfuseModel.task_loss

    def loss(self, batch, out):
        value = task_loss(self, batch, out)
        return value if self.training else value * float("nan")

    monkeypatch.setattr(AdfuseModel, "task_loss", loss)


@pytest.mark.parametrize("monitor", ["val_loss", "val_score"])
def test_no_finite_validation_loss_fails_the_run(cohort, tmp_path, monkeypatch, monitor):
    _nan_when_validating(monkeypatch)
    out = tmp_path / "run"
    with pytest.raises(
        TrainingDivergedError, match=r"training diverged: the validation loss .*not finite at any"
    ):
        fit(cohort.root, config(monitor=monitor), out, cache_dir=tmp_path / "cache", progress=False)
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed" and "training diverged" in run["error"]
    assert not (out / "checkpoints" / "best.safetensors").exists()
    assert pd.read_csv(out / "history.csv")["best"].eq(False).all()


def test_a_non_finite_training_loss_fails_the_run(cohort, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match=r"training loss became nan .*lower --lr"):
        fit(cohort.root, config(lr=1e6), out, cache_dir=tmp_path / "cache", progress=False)
    assert json.loads((out / "run.json").read_text())["status"] == "failed"


def test_cli_diverged_training_is_one_line_exit_2(cohort, tmp_path, monkeypatch, capsys):
    from adfuse import cli

    common = ["--modalities", "clinical", "--epochs", "2", "--cache", str(tmp_path / "cache")]
    train = ["adfuse", "train", str(cohort.root), "--model", "unimodal", *common]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "adfuse.cli",
            *train[1:],
            "--lr",
            "1e6",
            "--out",
            str(tmp_path / "a"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "error: unimodal: training diverged: the training loss" in result.stderr.splitlines()[-1]
    _nan_when_validating(monkeypatch)  # in this process: the CLI's main with a NaN validation loss
    monkeypatch.setattr(sys, "argv", [*train, "--out", str(tmp_path / "b")])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("error: unimodal: training diverged: the validation loss was not")
    assert json.loads((tmp_path / "b" / "run.json").read_text())["status"] == "failed"
