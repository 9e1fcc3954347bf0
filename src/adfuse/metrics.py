"""Test-set metrics, and subject-level bootstrap confidence intervals for them.

Every metric is computed from per-subject *weights*: ones for the point estimate, and for a
bootstrap resample the number of times each subject was drawn. A metric function that accepts
``weights`` of shape ``[B, n]`` returns one value per row, so 1,000 resamples are a few matrix
products instead of 1,000 calls (``bootstrap_ci`` uses that when the function has a ``weights``
parameter, and loops over resampled index arrays otherwise).

- ``classification_metrics``: accuracy, balanced accuracy, macro F1, per-class sensitivity and
  specificity, AUC (binary: the positive class; multi-class: one-vs-rest macro), ECE, n.
- ``regression_metrics``: RMSE, MAE, R², n, and RMSE within the ΔCDR-SB bins PerM-MoE reports
  (y ≤ 0, 0 < y ≤ 1, y > 1).
- ``bootstrap_ci`` (percentile CI), ``paired_bootstrap`` (difference of two models on the same
  resamples, with a two-sided p-value), ``metrics_with_ci`` (the ``metrics.json`` layout).

An undefined value (AUC with a class absent, RMSE of an empty bin) is NaN, never an error.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np

from adfuse.errors import ConfigError

ECE_BINS = 10
# ΔCDR-SB bins of PerM-MoE's regression table: (name, lower bound exclusive, upper bound inclusive)
CDRSB_BINS = (("le0", -np.inf, 0.0), ("0to1", 0.0, 1.0), ("gt1", 1.0, np.inf))
MAX_WEIGHT_CELLS = 4_000_000  # resamples x subjects held in memory at once

MetricFn = Callable[..., dict]


# ----------------------------------------------------------------------------- weights
def _weights(n: int, weights: np.ndarray | None) -> tuple[np.ndarray, bool]:
    """-> ([B, n] float weights, whether the caller passed a batch of weight rows)."""
    if weights is None:
        return np.ones((1, n)), False
    weights = np.asarray(weights, dtype=np.float64)
    batched = weights.ndim == 2
    weights = np.atleast_2d(weights)
    if weights.shape[1] != n:
        raise ConfigError(
            f"weights have {weights.shape[1]} columns, expected one per subject ({n})"
        )
    return weights, batched


def _finish(values: dict[str, np.ndarray], batched: bool) -> dict:
    if batched:
        return values
    out = {name: float(value[0]) for name, value in values.items()}
    for name in out:  # counts print as counts
        if (name == "n" or name.startswith("n_")) and out[name].is_integer():
            out[name] = int(out[name])
    return out


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(
            denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan
        )


def _onehot(index: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros((len(index), width))
    out[np.arange(len(index)), index] = 1.0
    return out


# ----------------------------------------------------------------------------- classification
def classification_metrics(
    y_true: np.ndarray,
    proba: np.ndarray,
    classes: list[str] | tuple[str, ...],
    *,
    weights: np.ndarray | None = None,
) -> dict:
    """Metrics of class probabilities ``proba [n, C]`` against integer labels ``y_true [n]``.

    ``weights``: per-subject weights ``[n]``, or ``[B, n]`` for B weightings at once (then every
    value is an array ``[B]``). The predicted class is the most probable one.
    """
    y_true = np.asarray(y_true).astype(np.int64).reshape(-1)
    proba = np.asarray(proba, dtype=np.float64)
    n_classes = len(classes)
    if proba.ndim != 2 or proba.shape != (len(y_true), n_classes):
        raise ConfigError(
            f"probabilities must be [n subjects, {n_classes} classes] = "
            f"[{len(y_true)}, {n_classes}], got {list(proba.shape)}"
        )
    if len(y_true) and (y_true.min() < 0 or y_true.max() >= n_classes):
        raise ConfigError(f"labels must be 0..{n_classes - 1}, found {sorted(set(y_true))}")
    weights, batched = _weights(len(y_true), weights)

    y_pred = proba.argmax(axis=1)
    # confusion[b, true, predicted] as weighted counts
    confusion = (weights @ _onehot(y_true * n_classes + y_pred, n_classes**2)).reshape(
        -1, n_classes, n_classes
    )
    total = confusion.sum(axis=(1, 2))
    hits = np.diagonal(confusion, axis1=1, axis2=2)
    support = confusion.sum(axis=2)
    predicted = confusion.sum(axis=1)
    negatives = total[:, None] - support
    true_negatives = negatives - predicted + hits

    recall = _divide(hits, support)
    with np.errstate(invalid="ignore"):
        # sklearn's conventions: balanced accuracy over the classes in y_true, macro F1 over the
        # classes in y_true or y_pred
        balanced = _nanmean(recall)
        f1 = np.where(support + predicted > 0, _divide(2 * hits, support + predicted), np.nan)
    values = {
        "n": total,
        "accuracy": _divide(hits.sum(axis=1), total),
        "balanced_accuracy": balanced,
        "macro_f1": _nanmean(f1),
        "auc": _auc(y_true, proba, weights),
        "ece": _ece(y_true, proba, y_pred, weights, total),
    }
    specificity = _divide(true_negatives, negatives)
    for k, name in enumerate(classes):
        values[f"sensitivity_{name}"] = recall[:, k]
        values[f"specificity_{name}"] = specificity[:, k]
    return _finish(values, batched)


def _nanmean(values: np.ndarray) -> np.ndarray:
    count = np.isfinite(values).sum(axis=1)
    return _divide(np.nansum(values, axis=1), count)


def _auc(y_true: np.ndarray, proba: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Binary: AUC of class 1; multi-class: mean one-vs-rest AUC (NaN when a class is absent)."""
    n_classes = proba.shape[1]
    positive_classes = [1] if n_classes == 2 else range(n_classes)
    per_class = [_weighted_auc(proba[:, k], y_true == k, weights) for k in positive_classes]
    return np.mean(per_class, axis=0)  # a NaN class makes the mean NaN, on purpose


def _weighted_auc(score: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC with subject weights: P(score_pos > score_neg) + ½ P(tie), per weight row.

    Subjects are sorted by score once; tied scores form one group, and each positive counts the
    weight of negatives in lower groups plus half of those in its own group.
    """
    if len(score) == 0:
        return np.full(len(weights), np.nan)
    order = np.argsort(score, kind="stable")
    sorted_score = score[order]
    starts = np.flatnonzero(np.r_[True, np.diff(sorted_score) != 0])
    sorted_weights = weights[:, order]
    is_positive = positive[order]
    group_pos = np.add.reduceat(sorted_weights * is_positive, starts, axis=1)
    group_neg = np.add.reduceat(sorted_weights * ~is_positive, starts, axis=1)
    below = np.cumsum(group_neg, axis=1) - group_neg
    wins = (group_pos * (below + 0.5 * group_neg)).sum(axis=1)
    return _divide(wins, group_pos.sum(axis=1) * group_neg.sum(axis=1))


def _ece(y_true, proba, y_pred, weights, total) -> np.ndarray:
    """Expected calibration error: 10 equal-width bins [i/10, (i+1)/10) of the top probability
    (1.0 in the last); Σ_bins |Σ correct − Σ confidence| / n."""
    confidence = proba.max(axis=1)
    correct = (y_pred == y_true).astype(np.float64)
    bins = _onehot(np.minimum((confidence * ECE_BINS).astype(np.int64), ECE_BINS - 1), ECE_BINS)
    gap = weights @ (bins * (correct - confidence)[:, None])
    return _divide(np.abs(gap).sum(axis=1), total)


# ----------------------------------------------------------------------------- regression
def regression_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, *, weights: np.ndarray | None = None
) -> dict:
    """RMSE, MAE, R², n, and RMSE (with n) within the ΔCDR-SB bins ``le0``, ``0to1``, ``gt1``.

    R² is NaN when y_true is constant; a bin's RMSE is NaN when no subject falls in it.
    ``weights`` as in ``classification_metrics``.
    """
    y_true = np.asarray(y_true, dtype=np.float64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ConfigError(
            f"{len(y_pred)} predictions for {len(y_true)} targets: expected one per subject"
        )
    weights, batched = _weights(len(y_true), weights)
    error = y_pred - y_true
    total = weights.sum(axis=1)
    squared = weights @ error**2
    mean_true = _divide(weights @ y_true, total)
    spread = (weights * (y_true[None, :] - mean_true[:, None]) ** 2).sum(axis=1)  # Σ w (y - ȳ)²
    # a constant target leaves only rounding error here: R² is undefined, not a huge number
    spread = np.where(spread > total * (1e-9 * (np.abs(mean_true) + 1)) ** 2, spread, 0.0)
    values = {
        "n": total,
        "rmse": np.sqrt(_divide(squared, total)),
        "mae": _divide(weights @ np.abs(error), total),
        "r2": 1.0 - _divide(squared, spread),
    }
    for name, low, high in CDRSB_BINS:
        inside = ((y_true > low) & (y_true <= high)).astype(np.float64)
        count = weights @ inside
        values[f"rmse_{name}"] = np.sqrt(_divide(weights @ (inside * error**2), count))
        values[f"n_{name}"] = count
    return _finish(values, batched)


# ----------------------------------------------------------------------------- bootstrap
def _resample_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n] subject indices drawn with replacement (the same for a seed)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _counts(indices: np.ndarray, n: int) -> np.ndarray:
    """Index rows -> how many times each subject was drawn in each row ([rows, n] floats)."""
    rows = len(indices)
    flat = (indices + n * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)


def _accepts_weights(metric_fn: MetricFn) -> bool:
    try:
        return "weights" in inspect.signature(metric_fn).parameters
    except (TypeError, ValueError):
        return False


def _resampled(metric_fn: MetricFn, y_true, preds: list[np.ndarray], indices: np.ndarray):
    """Per prediction array: {name: [n_boot] values} over the resamples ``indices``."""
    n = len(y_true)
    out: list[dict[str, list[np.ndarray]]] = [{} for _ in preds]
    if _accepts_weights(metric_fn):
        step = max(1, MAX_WEIGHT_CELLS // max(n, 1))
        for start in range(0, len(indices), step):
            weights = _counts(indices[start : start + step], n)
            for values, pred in zip(out, preds, strict=True):
                for name, value in metric_fn(y_true, pred, weights=weights).items():
                    values.setdefault(name, []).append(np.asarray(value, dtype=np.float64))
        return [{k: np.concatenate(v) for k, v in values.items()} for values in out]
    for row in indices:
        for values, pred in zip(out, preds, strict=True):
            for name, value in metric_fn(y_true[row], pred[row]).items():
                values.setdefault(name, []).append(float(value))
    return [{k: np.asarray(v, dtype=np.float64) for k, v in values.items()} for values in out]


def _percentiles(values: np.ndarray, alpha: float) -> tuple[float, float]:
    valid = values[np.isfinite(values)]
    if len(valid) == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(valid, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def _check_bootstrap(y_true, preds, n_boot: int, alpha: float, least: int = 1) -> None:
    if n_boot < least:
        raise ConfigError(f"n_boot must be at least {least}, got {n_boot}")
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be between 0 and 1, got {alpha}")
    for pred in preds:
        if len(pred) != len(y_true):
            raise ConfigError(f"{len(pred)} predictions for {len(y_true)} subjects")


def bootstrap_ci(
    y_true: np.ndarray,
    pred: np.ndarray,
    metric_fn: MetricFn,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, tuple[float, float, float]]:
    """Percentile bootstrap over test subjects: ``{metric: (point, low, high)}``.

    ``metric_fn(y_true, pred) -> {name: value}``; when it also takes ``weights`` (as
    ``classification_metrics`` and ``regression_metrics`` do, e.g. through ``functools.partial``
    to bind ``classes``), all resamples are evaluated at once. Resamples where a metric is
    undefined (NaN: a class missing for AUC) are left out of that metric's interval.
    ``n_boot=0``: no interval (NaN bounds).
    """
    y_true, pred = np.asarray(y_true), np.asarray(pred)
    _check_bootstrap(y_true, [pred], n_boot, alpha, least=0)
    point = metric_fn(y_true, pred)
    if len(y_true) == 0 or n_boot == 0:
        return {name: (value, float("nan"), float("nan")) for name, value in point.items()}
    indices = _resample_indices(len(y_true), n_boot, seed)
    (resampled,) = _resampled(metric_fn, y_true, [pred], indices)
    return {name: (value, *_percentiles(resampled[name], alpha)) for name, value in point.items()}


def paired_bootstrap(
    y_true: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    metric: MetricFn,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, dict[str, float]]:
    """Model A minus model B on the same subject resamples, per metric of ``metric``:
    ``{name: {"difference", "low", "high", "p_value"}}``.

    The two-sided p-value is 2·min(P*(Δ ≤ 0), P*(Δ ≥ 0)) over the resampled differences, with
    the +1 correction (so never 0; identical models give 1).
    """
    y_true, pred_a, pred_b = np.asarray(y_true), np.asarray(pred_a), np.asarray(pred_b)
    _check_bootstrap(y_true, [pred_a, pred_b], n_boot, alpha)
    point_a, point_b = metric(y_true, pred_a), metric(y_true, pred_b)
    out = {}
    if len(y_true) == 0:
        resampled_a = resampled_b = {name: np.array([]) for name in point_a}
    else:
        indices = _resample_indices(len(y_true), n_boot, seed)
        resampled_a, resampled_b = _resampled(metric, y_true, [pred_a, pred_b], indices)
    for name in point_a:
        difference = resampled_a[name] - resampled_b[name]
        difference = difference[np.isfinite(difference)]
        low, high = _percentiles(difference, alpha)
        if len(difference):
            below = (np.sum(difference <= 0) + 1) / (len(difference) + 1)
            above = (np.sum(difference >= 0) + 1) / (len(difference) + 1)
            p_value = float(min(1.0, 2 * min(below, above)))
        else:
            p_value = float("nan")
        out[name] = {
            "difference": float(point_a[name] - point_b[name]),
            "low": low,
            "high": high,
            "p_value": p_value,
        }
    return out


def metric_function(task_kind: str, classes: list[str] | tuple[str, ...] | None = None) -> MetricFn:
    """The metric function of a task kind, ready for ``bootstrap_ci`` (classes bound)."""
    if task_kind == "classification":
        if not classes:
            raise ConfigError("classification metrics need the class names")
        names = list(classes)

        def classification(y_true, proba, *, weights=None):
            return classification_metrics(y_true, proba, names, weights=weights)

        return classification
    if task_kind == "regression":
        return regression_metrics
    raise ConfigError(f"unknown task kind '{task_kind}': expected classification or regression")


def metrics_with_ci(
    task_kind: str,
    y_true: np.ndarray,
    pred: np.ndarray,
    classes: list[str] | tuple[str, ...] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, dict[str, float]]:
    """``{metric: {"value", "low", "high"}}`` (95% percentile CI by default), for metrics.json.

    ``pred``: probabilities ``[n, C]`` for classification, predictions ``[n]`` for regression.
    Undefined values are NaN (``adfuse.evaluate.write_evaluation`` writes them as null).
    """
    results = bootstrap_ci(y_true, pred, metric_function(task_kind, classes), n_boot, seed, alpha)
    return {
        name: {"value": value, "low": low, "high": high}
        for name, (value, low, high) in results.items()
    }
