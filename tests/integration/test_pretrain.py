"""``adfuse pretrain`` on the synthetic cohort: leak-free subjects, a reusable encoder folder that
beats a random one in a linear probe, and the anchored model trained with it from the CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from adfuse import splits, tasks
from adfuse.cli import app
from adfuse.data.cohort import load_cohort
from adfuse.models.foundation import build_encoder, load_encoder, read_encoder_config
from adfuse.pretrain import PretrainConfig, pretraining_subjects

EPOCHS = 8


@pytest.fixture(scope="module")
def encoder_dir(synth_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("encoders") / "smri"
    result = CliRunner().invoke(
        app,
        ["pretrain", str(synth_small), "--modality", "smri", "--epochs", str(EPOCHS),
         "--out", str(out), "--cache", str(out.parent / "cache")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def test_pretraining_leaves_every_test_split_of_the_seed_out(synth_small, encoder_dir):
    cohort = load_cohort(synth_small)
    ids, provenance = pretraining_subjects(cohort, "t1", PretrainConfig(modality="smri"))
    for name in ("cn_vs_ad", "diagnosis", "smci_vs_pmci"):
        assert not set(ids) & set(splits.subject_split(cohort, name, seed=0).test)
    document = json.loads((encoder_dir / "config.json").read_text())
    info = document["pretraining"]
    assert info["subjects_used"] == len(ids) == provenance["subjects_used"]
    assert info["exclude_test"] and info["test_subjects_excluded"] > 0
    history = info["history"]
    assert len(history) == EPOCHS
    assert history[-1]["reconstruction_loss"] < history[0]["reconstruction_loss"]
    included, _ = pretraining_subjects(
        cohort, "t1", PretrainConfig(modality="smri", exclude_test=False)
    )
    assert set(ids) < set(included)


def test_the_pretrained_encoder_beats_a_random_one_in_a_linear_probe(synth_small, encoder_dir):
    """Ridge regression (5-fold CV R^2) of the planted disease severity (truth.json) on the mean
    pooled T1 features of the frozen encoder: pre-trained vs the same architecture at random."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_score

    from adfuse.prepare import CohortDataset, Preprocessor

    cohort = load_cohort(synth_small)
    truth = json.loads((synth_small / "truth.json").read_text())
    severity = {s["PTID"]: s["severity_bl"] for s in truth["subjects"]}
    ids = [i for i in cohort.availability.index if cohort.availability.loc[i, "t1"]]
    config = read_encoder_config(encoder_dir)
    prepare = PretrainConfig(modality="smri").prepare.model_copy(update={"views": {"t1": "volume"}})
    data = CohortDataset(
        cohort,
        tasks.get("diagnosis"),
        ids,
        ["t1"],
        Preprocessor.fit(cohort, ["t1"], ids),
        prepare,
        encoder_dir.parent / "cache",
        labelled=False,
    ).batch()
    x, y = data.inputs["t1"].float(), np.array([severity[i] for i in ids])
    encoders = {"pretrained": load_encoder(encoder_dir, "smri", tuple(config.input_shape))}
    for seed in range(3):  # random initialisations vary: compare with several
        torch.manual_seed(seed)
        encoders[f"random{seed}"] = build_encoder(config)
    scores = {}
    for name, encoder in encoders.items():
        encoder.eval()
        with torch.no_grad():
            states, mask = encoder({"t1": x}, {"t1": torch.ones(len(x), dtype=torch.bool)})
            features = encoder.pool(states, mask).numpy()
        features = (features - features.mean(0)) / (features.std(0) + 1e-6)
        probe = RidgeCV(alphas=np.logspace(-2, 4, 13))
        cv = KFold(5, shuffle=True, random_state=0)
        scores[name] = cross_val_score(probe, features, y, cv=cv, scoring="r2").mean()
    random = max(v for k, v in scores.items() if k.startswith("random"))
    assert scores["pretrained"] > random, scores
    assert scores["pretrained"] > np.mean([scores[f"random{s}"] for s in range(3)]) + 0.03, scores


def test_anchored_trains_from_the_cli_with_the_pretrained_encoder(
    synth_small, encoder_dir, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    monkeypatch.chdir(encoder_dir.parent)  # dataset and encoder given relative to here
    result = CliRunner().invoke(
        app,
        ["train", os.path.relpath(synth_small), "--model", "anchored", "--task", "cn_vs_ad",
         "--epochs", "1", "--modalities", "t1,clinical,genotype", "--set", "smri_encoder=smri",
         "--out", str(run), "--cache", str(tmp_path / "cache")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    recorded = json.loads((run / "run.json").read_text())
    assert recorded["dataset"]["path"] == str(synth_small.resolve())
    assert recorded["config"]["overrides"]["smri_encoder"] == str(encoder_dir.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the run works from any directory
    result = CliRunner().invoke(app, ["evaluate", str(run), "--cache", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    stages = [row.split(",")[0] for row in (run / "history.csv").read_text().splitlines()[1:]]
    assert stages == ["unimodal", "anchor_smri", "anchor_text", "anchor_genetics"]
    assert recorded["model_config"]["smri_encoder"] == str(encoder_dir.resolve())
    efficiency = json.loads((run / "efficiency.json").read_text())["model"]
    assert set(efficiency["stages"]) == set(stages)
    assert efficiency["rotating_inference"]["rounds"] == 3
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["balanced_accuracy"]["value"] <= 1
