"""Metrics on hand-made arrays, and the subject bootstrap (CIs, paired comparison)."""

from __future__ import annotations

import math
import warnings
from functools import partial

import numpy as np
import pytest
from sklearn import metrics as sk

from adfuse.errors import ConfigError
from adfuse.metrics import (
    bootstrap_ci,
    classification_metrics,
    metrics_with_ci,
    paired_bootstrap,
    regression_metrics,
)

BINARY = ["CN", "AD"]
THREE = ["CN", "MCI", "AD"]


def confident(y_pred: list[int], n_classes: int, top: float = 0.8) -> np.ndarray:
    """Probabilities whose argmax is ``y_pred``."""
    rest = (1 - top) / (n_classes - 1)
    proba = np.full((len(y_pred), n_classes), rest)
    proba[np.arange(len(y_pred)), y_pred] = top
    return proba


def random_case(n: int, n_classes: int, seed: int, signal: float = 0.3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    proba = rng.dirichlet(np.ones(n_classes), n)
    proba[np.arange(n), y] += signal
    proba = np.round(proba / proba.sum(1, keepdims=True), 1) + 1e-9  # many tied scores
    return y, proba / proba.sum(1, keepdims=True)


# ----------------------------------------------------------------------------- classification
def test_perfect_classifier():
    y = np.array([0, 1, 0, 1, 1])
    m = classification_metrics(y, np.eye(2)[y], BINARY)
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "auc"):
        assert m[name] == 1.0, name
    assert m["sensitivity_AD"] == m["specificity_AD"] == m["sensitivity_CN"] == 1.0
    assert m["ece"] == 0.0
    assert m["n"] == 5


def test_chance_classifier():
    y = np.array([0, 1] * 10)
    m = classification_metrics(y, np.full((20, 2), 0.5), BINARY)
    assert m["balanced_accuracy"] == 0.5
    assert m["auc"] == 0.5
    assert m["sensitivity_CN"] == 1.0 and m["sensitivity_AD"] == 0.0  # always predicts CN


def test_hand_computed_confusion_matrix():
    y_true = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    y_pred = [0, 0, 0, 1, 0, 1, 1, 1, 2, 2]  # confusion rows true: [[3,1,0],[1,2,0],[0,1,2]]
    m = classification_metrics(np.array(y_true), confident(y_pred, 3), THREE)
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 2 / 3 + 2 / 3) / 3)
    assert m["sensitivity_CN"] == pytest.approx(3 / 4)
    assert m["sensitivity_MCI"] == pytest.approx(2 / 3)
    assert m["specificity_CN"] == pytest.approx(5 / 6)  # TN 5 of 6 non-CN
    assert m["specificity_MCI"] == pytest.approx(5 / 7)
    assert m["specificity_AD"] == pytest.approx(1.0)
    assert m["macro_f1"] == pytest.approx((6 / 8 + 4 / 7 + 4 / 5) / 3)


@pytest.mark.parametrize("n_classes", [2, 3, 4])
def test_agrees_with_scikit_learn(n_classes):
    y, proba = random_case(150, n_classes, seed=n_classes)
    names = [f"c{k}" for k in range(n_classes)]
    m = classification_metrics(y, proba, names)
    y_pred = proba.argmax(1)
    auc = (
        sk.roc_auc_score(y, proba[:, 1])
        if n_classes == 2
        else sk.roc_auc_score(y, proba, multi_class="ovr", average="macro")
    )
    assert m["auc"] == pytest.approx(auc, abs=1e-12)
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(y, y_pred))
    assert m["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(y, y_pred))
    assert m["macro_f1"] == pytest.approx(sk.f1_score(y, y_pred, average="macro"))
    recall = sk.recall_score(y, y_pred, average=None)
    for k, name in enumerate(names):
        assert m[f"sensitivity_{name}"] == pytest.approx(recall[k])


def test_auc_is_nan_without_error_when_a_class_is_absent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        binary = classification_metrics(np.zeros(6, int), np.full((6, 2), 0.5), BINARY)
        y = np.array([0, 1, 0, 1])
        three = classification_metrics(y, confident(list(y), 3), THREE)
    assert math.isnan(binary["auc"]) and math.isnan(three["auc"])
    assert math.isnan(three["sensitivity_AD"])
    assert three["balanced_accuracy"] == 1.0  # over the classes present, as scikit-learn


def test_ece_calibrated_and_overconfident():
    # confidence 0.7 and 7 of 10 right: calibrated
    y = np.array([0] * 7 + [1] * 3)
    calibrated = classification_metrics(y, np.tile([0.7, 0.3], (10, 1)), BINARY)
    assert calibrated["ece"] == pytest.approx(0.0, abs=1e-12)
    # confidence 0.9 and half right: overconfident by 0.4
    y = np.array([0, 1] * 5)
    overconfident = classification_metrics(y, np.tile([0.9, 0.1], (10, 1)), BINARY)
    assert overconfident["ece"] == pytest.approx(0.4)
    # two bins: 0.95 confident and all right (gap 0.05), 0.6 confident and none right (gap 0.6)
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.95, 0.05], [0.95, 0.05], [0.6, 0.4], [0.6, 0.4]])
    assert classification_metrics(y, proba, BINARY)["ece"] == pytest.approx((0.1 + 1.2) / 4)


def test_bad_shapes_are_config_errors():
    with pytest.raises(ConfigError, match="probabilities"):
        classification_metrics(np.array([0, 1]), np.ones((2, 3)) / 3, BINARY)
    with pytest.raises(ConfigError, match="labels"):
        classification_metrics(np.array([0, 2]), np.ones((2, 2)) / 2, BINARY)
    with pytest.raises(ConfigError, match="predictions"):
        regression_metrics(np.zeros(3), np.zeros(2))


# ----------------------------------------------------------------------------- regression
def test_regression_and_cdrsb_bins():
    y_true = np.array([-1.0, 0.0, 0.5, 1.0, 2.0, 3.0])
    y_pred = y_true + np.array([1.0, -1.0, 0.0, 2.0, 0.0, -2.0])
    m = regression_metrics(y_true, y_pred)
    assert m["rmse"] == pytest.approx(math.sqrt(10 / 6))
    assert m["mae"] == pytest.approx(1.0)
    assert m["r2"] == pytest.approx(sk.r2_score(y_true, y_pred))
    assert m["n"] == 6
    assert (m["rmse_le0"], m["n_le0"]) == (pytest.approx(1.0), 2)  # y <= 0: -1 and 0
    assert (m["rmse_0to1"], m["n_0to1"]) == (pytest.approx(math.sqrt(2)), 2)  # 0.5 and 1
    assert (m["rmse_gt1"], m["n_gt1"]) == (pytest.approx(math.sqrt(2)), 2)  # 2 and 3


def test_empty_bin_and_constant_target_are_nan():
    m = regression_metrics(np.array([2.0, 3.0, 4.0]), np.array([2.0, 3.5, 4.0]))
    assert math.isnan(m["rmse_le0"]) and m["n_le0"] == 0
    assert m["n_gt1"] == 3
    assert math.isnan(regression_metrics(np.full(4, 0.1), np.full(4, 0.2))["r2"])


def test_weights_equal_repeating_subjects():
    y, proba = random_case(40, 3, seed=7)
    counts = np.random.default_rng(0).integers(0, 4, 40)
    repeated = np.repeat(np.arange(40), counts)
    weighted = classification_metrics(y, proba, THREE, weights=counts)
    explicit = classification_metrics(y[repeated], proba[repeated], THREE)
    assert weighted == pytest.approx(explicit, nan_ok=True)
    target = np.linspace(-1, 3, 40)
    pred = target + np.sin(np.arange(40))
    assert regression_metrics(target, pred, weights=counts) == pytest.approx(
        regression_metrics(target[repeated], pred[repeated]), nan_ok=True
    )


# ----------------------------------------------------------------------------- bootstrap
def classification(classes):
    return partial(classification_metrics, classes=classes)


def test_bootstrap_interval_contains_point_and_is_deterministic():
    y, proba = random_case(120, 2, seed=1)
    first = bootstrap_ci(y, proba, classification(BINARY), n_boot=300, seed=3)
    again = bootstrap_ci(y, proba, classification(BINARY), n_boot=300, seed=3)
    other = bootstrap_ci(y, proba, classification(BINARY), n_boot=300, seed=4)
    assert first == again
    assert first["auc"] != other["auc"]
    for name in ("accuracy", "balanced_accuracy", "auc", "macro_f1", "ece"):
        point, low, high = first[name]
        assert low < point < high, name
    assert first["n"] == (120, 120, 120)


def test_bootstrap_interval_shrinks_with_more_subjects():
    def width(n):
        y, proba = random_case(n, 2, seed=n)
        _, low, high = bootstrap_ci(y, proba, classification(BINARY), n_boot=400)["auc"]
        return high - low

    assert width(800) < 0.6 * width(50)


def test_vectorised_bootstrap_equals_the_loop_over_resamples():
    y, proba = random_case(30, 3, seed=2)

    def without_weights(y_true, pred):  # no ``weights`` parameter: the loop path
        return classification_metrics(y_true, pred, THREE)

    fast = bootstrap_ci(y, proba, classification(THREE), n_boot=50, seed=5)
    slow = bootstrap_ci(y, proba, without_weights, n_boot=50, seed=5)
    assert fast.keys() == slow.keys()
    for name in fast:
        assert fast[name] == pytest.approx(slow[name], nan_ok=True), name


def test_bootstrap_leaves_out_resamples_without_a_class():
    y = np.array([0] * 19 + [1])  # one AD subject: many resamples have no AD at all
    proba = confident(list(y), 2)
    point, low, high = bootstrap_ci(y, proba, classification(BINARY), n_boot=200)["auc"]
    assert (point, low, high) == (1.0, 1.0, 1.0)


def test_regression_bootstrap():
    rng = np.random.default_rng(0)
    y = rng.normal(1, 1, 100)
    point, low, high = bootstrap_ci(y, y + rng.normal(0, 0.5, 100), regression_metrics)["rmse"]
    assert low < point < high and 0.35 < point < 0.65


def test_paired_bootstrap():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 150)
    good = np.clip(np.eye(2)[y] * 0.6 + rng.uniform(0, 0.4, (150, 2)), 0, 1)
    noise = rng.uniform(0, 1, (150, 2))
    better = paired_bootstrap(y, good, noise, classification(BINARY), n_boot=500)
    assert better["auc"]["difference"] > 0.3
    assert better["auc"]["low"] > 0
    assert better["auc"]["p_value"] < 0.01
    same = paired_bootstrap(y, noise, noise.copy(), classification(BINARY), n_boot=500)
    assert same["auc"] == {"difference": 0.0, "low": 0.0, "high": 0.0, "p_value": 1.0}


def test_metrics_with_ci_layout():
    y, proba = random_case(60, 3, seed=9)
    out = metrics_with_ci("classification", y, proba, THREE, n_boot=100, seed=0)
    assert {"balanced_accuracy", "auc", "ece", "sensitivity_MCI", "specificity_AD"} <= set(out)
    assert set(out["auc"]) == {"value", "low", "high"}
    regression = metrics_with_ci("regression", np.arange(10.0), np.arange(10.0) + 1, None, 50, 0)
    assert regression["mae"]["value"] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="task kind"):
        metrics_with_ci("ranking", y, proba, THREE, 10, 0)


def test_no_bootstrap_gives_the_point_values_without_an_interval(tmp_path):
    """``n_boot=0`` (TrainConfig allows it): metrics.json keeps the values, the bounds are null."""
    import json

    from adfuse.evaluate import write_metrics

    y, proba = random_case(60, 3, seed=9)
    out = metrics_with_ci("classification", y, proba, THREE, n_boot=0, seed=0)
    again = metrics_with_ci("classification", y, proba, THREE, n_boot=10, seed=0)
    assert out["auc"]["value"] == again["auc"]["value"]
    assert math.isnan(out["auc"]["low"]) and math.isnan(out["auc"]["high"])
    saved = json.loads(write_metrics(tmp_path, out).read_text())
    assert saved["auc"]["low"] is None and saved["auc"]["value"] == out["auc"]["value"]
    with pytest.raises(ConfigError, match="n_boot must be at least 0"):
        bootstrap_ci(y, proba, classification(THREE), n_boot=-1)
    with pytest.raises(ConfigError, match="n_boot must be at least 1"):  # a p-value needs draws
        paired_bootstrap(y, proba, proba, classification(THREE), n_boot=0)
