"""The scikit-learn baselines: they learn a separable signal, handle absent modalities, refit the
same model from the same data and seed, and logreg's fitted arrays round-trip through safetensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adfuse import models
from adfuse.prepare import Batch
from tests.models.conftest import PREPARE, random_batch


def create(name: str, task: str = "diagnosis", **overrides):
    from tests.models.conftest import make_spec

    return models.create(name, make_spec(), task, prepare=PREPARE, **overrides)


def separable(model, n: int, seed: int) -> Batch:
    """Random inputs where the class (or the target) shifts clinical feature 0 and t1 region 1."""
    batch = random_batch(model, n=n, seed=seed)
    if model.task_kind == "classification":
        signal = batch.target.float() - 1.0  # classes 0, 1, 2 -> -1, 0, +1
    else:
        signal = batch.target
    clinical, t1 = batch.inputs["clinical"], batch.inputs["t1"]
    clinical[:, 0] = torch.where(batch.present["clinical"], clinical[:, 0] + 3 * signal, 0.0)
    t1[:, 1] = torch.where(batch.present["t1"], t1[:, 1] + 3 * signal, 0.0)
    return batch


def test_views_and_modalities():
    model = create("logreg")
    assert "notes" not in model.modalities
    assert model.views() == {"t1": "regions", "amyloid": "regions", "fmri": "connectivity"}
    assert model.input_shape("t1") == (5,)
    assert model.input_shape("fmri") == (5, 5)
    assert models.available(kind="sklearn") == ["gboost", "logreg"]
    batch = random_batch(model, n=3, seed=0)
    features = model.features(batch)
    assert features.shape == (3, len(model.feature_names()))
    assert model.feature_names()[-1] == "fmri:present"


@pytest.mark.parametrize("name", ["logreg", "gboost"])
def test_learns_a_separable_signal(name):
    model = create(name)
    model.fit(separable(model, 150, seed=1), separable(model, 40, seed=2), seed=0)
    test = separable(model, 90, seed=3)
    probabilities = model.predict(test)
    assert probabilities.shape == (90, 3)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(90))
    accuracy = (probabilities.argmax(1) == test.target).float().mean().item()
    assert accuracy > 0.5  # chance is 1/3; absent modalities carry no signal


@pytest.mark.parametrize("name", ["logreg", "gboost"])
def test_regression(name):
    model = create(name, "progression")
    model.fit(separable(model, 150, seed=1), None, seed=0)
    test = separable(model, 60, seed=3)
    prediction = model.predict(test)
    assert prediction.shape == (60,)
    assert np.corrcoef(prediction.numpy(), test.target.numpy())[0, 1] > 0.5


@pytest.mark.parametrize("name", ["logreg", "gboost"])
def test_absent_modalities(name):
    model = create(name)
    model.fit(separable(model, 100, seed=1), None, seed=0)
    batch = separable(model, 20, seed=4)
    noisy = Batch(
        {
            m: torch.where(batch.present[m].view(-1, *[1] * (x.dim() - 1)), x, 7.0)
            for m, x in batch.inputs.items()
        },
        dict(batch.present),
        batch.target,
        list(batch.ids),
    )
    torch.testing.assert_close(model.predict(noisy), model.predict(batch), rtol=0, atol=0)
    for modality in model.modalities:
        out = model.predict(batch.without(set(model.modalities) - {modality}))
        assert torch.isfinite(out).all()
    assert torch.isfinite(model.predict(batch.without(model.modalities))).all()


def test_gboost_refit_is_deterministic():
    first = create("gboost")
    train, val, test = (separable(first, n, seed) for n, seed in ((120, 5), (40, 6), (30, 7)))
    outputs = [create("gboost").fit(train, val, seed=3).predict(test) for _ in range(2)]
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


@pytest.mark.parametrize("task", ["diagnosis", "progression"])
def test_logreg_state_round_trips_through_safetensors(task, tmp_path):
    from safetensors.torch import load_file, save_file

    model = create("logreg", task)
    model.fit(separable(model, 100, seed=1), None, seed=0)
    state = model.state()
    n_features = len(model.feature_names())
    assert state["scaler_mean"].shape == (n_features,)
    assert state["coef"].shape == ((3 if task == "diagnosis" else 1), n_features)
    save_file(state, str(tmp_path / "logreg.safetensors"))
    restored = create("logreg", task).load_state(load_file(str(tmp_path / "logreg.safetensors")))
    batch = separable(model, 20, seed=8)
    torch.testing.assert_close(restored.predict(batch), model.predict(batch))
    assert create("gboost").state() == {}


def test_a_class_missing_from_training_keeps_probability_zero():
    model = create("logreg")
    train = separable(model, 60, seed=1)
    train = train.select(torch.nonzero(train.target != 2).squeeze(1))
    model.fit(train, None, seed=0)
    probabilities = model.predict(separable(model, 10, seed=2))
    assert probabilities.shape == (10, 3)
    assert (probabilities[:, 2] == 0).all()
