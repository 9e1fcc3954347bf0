"""The benchmark's tables, from its run folders: leaderboard, patterns, fractions, comparisons.

- Across seeds, a row's value is the mean of the per-seed test metrics and its 95% CI the
  t-interval ``mean ± t(0.975, n-1) · sd / sqrt(n)``; with one seed there is no spread across
  seeds, and the CI is that run's bootstrap CI over test subjects (``ci`` says which). Bounds
  of metrics that live in [0, 1] are clipped to it (a t-interval of 2 seeds is wide).
- The oracle row (synthetic cohorts, ``bench.oracle``) is scored on each run's own test subjects;
  ``gap_to_oracle`` is the mean over seeds of (oracle - model) on the same subjects.
- Paired comparisons: two rows of the same task and fraction, on the seeds both have (the same
  split, so the same test subjects): the difference of the mean over seeds of the metric, A - B,
  with a percentile CI and a two-sided p-value from a paired bootstrap that resamples test
  subjects within each seed (both models on the same resample); p-values are Holm-corrected over
  every comparison of the table. A bootstrap p-value is at least 2 / (resamples + 1), so the
  table uses enough resamples for Holm's smallest threshold (``holm_resamples``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from adfuse.bench.plan import Job

if TYPE_CHECKING:
    import pandas as pd

MAIN_METRIC = {"classification": "balanced_accuracy", "regression": "rmse"}
REPORTED = {
    "classification": ("balanced_accuracy", "auc", "accuracy", "macro_f1", "ece"),
    "regression": ("rmse", "mae", "r2"),
}
LOWER_IS_BETTER = {"rmse", "mae", "ece"}


@dataclass
class RunRecord:
    """One finished run of the benchmark, read from its folder."""

    label: str
    name: str
    folder: Path
    model: str
    task: str
    seed: int
    fraction: float
    preset: str
    modalities: list[str]
    model_config: dict
    metrics: dict
    efficiency: dict
    classes: list[str]
    kind: str
    predictions: Any = field(repr=False)  # pandas frame: id, target, prob_<class> | prediction
    patterns: Any = field(repr=False, default=None)

    def outputs(self, ids: list[str] | None = None) -> np.ndarray:
        frame = self.predictions if ids is None else self.predictions.loc[ids]
        if self.kind == "classification":
            return frame[[f"prob_{c}" for c in self.classes]].to_numpy(dtype=np.float64)
        return frame["prediction"].to_numpy(dtype=np.float64)


def read_record(job: Job, folder: Path) -> RunRecord:
    import pandas as pd

    from adfuse import tasks
    from adfuse.runs import read_run

    run = read_run(folder)
    task = tasks.get(run["task"])
    predictions = pd.read_csv(folder / "predictions" / "test.csv", dtype={"id": str})
    patterns = pd.read_csv(folder / "patterns.csv") if (folder / "patterns.csv").exists() else None
    return RunRecord(
        label=job.label,
        name=folder.name,
        folder=folder,
        model=run["model"],
        task=run["task"],
        seed=int(run["seed"]),
        fraction=float(run["config"]["fraction"]),
        preset=run["config"]["preset"],
        modalities=list(run["modalities"]),
        model_config=run.get("model_config", {}),
        metrics=json.loads((folder / "metrics.json").read_text()),
        efficiency=json.loads((folder / "efficiency.json").read_text()),
        classes=list(task.classes),
        kind=task.kind,
        predictions=predictions.set_index("id", drop=False),
        patterns=patterns,
    )


# ----------------------------------------------------------------------------- statistics
def mean_ci(values: list[float] | np.ndarray, alpha: float = 0.05) -> tuple[float, float, float]:
    """Mean and t-interval across seeds; (mean, nan, nan) for one value, NaNs ignored."""
    from scipy.stats import t

    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if len(values) == 1:
        return mean, math.nan, math.nan
    half = float(t.ppf(1 - alpha / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return mean, mean - half, mean + half


def holm(p_values: list[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and does not count in the family)."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full_like(p, np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def paired_bootstrap_seeds(
    per_seed: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    metric_fn,
    metric: str,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, float]:
    """A - B of the mean over seeds of ``metric``, subjects resampled within each seed.

    ``per_seed``: (targets, outputs of A, outputs of B) on the same subjects, one per seed.
    Returns ``difference``, ``low``, ``high``, ``p_value`` (two-sided, +1 corrected), ``n``.
    """
    from adfuse.metrics import MAX_WEIGHT_CELLS, _counts

    rng = np.random.default_rng(seed)
    point, resampled = [], []
    for y, a, b in per_seed:
        point.append(metric_fn(y, a)[metric] - metric_fn(y, b)[metric])
        indices = rng.integers(0, len(y), size=(n_boot, len(y)))
        step = max(1, MAX_WEIGHT_CELLS // max(len(y), 1))
        differences = []
        for start in range(0, n_boot, step):  # bounded memory: chunks of resamples
            weights = _counts(indices[start : start + step], len(y))
            values_a = metric_fn(y, a, weights=weights)[metric]
            values_b = metric_fn(y, b, weights=weights)[metric]
            differences.append(np.asarray(values_a, dtype=np.float64) - values_b)
        resampled.append(np.concatenate(differences))
    difference = np.nanmean(np.stack(resampled), axis=0)
    difference = difference[np.isfinite(difference)]
    out = {"difference": float(np.nanmean(point)), "n": int(sum(len(y) for y, _, _ in per_seed))}
    if len(difference) == 0:
        return out | {"low": math.nan, "high": math.nan, "p_value": math.nan}
    low, high = np.percentile(difference, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    below = (np.sum(difference <= 0) + 1) / (len(difference) + 1)
    above = (np.sum(difference >= 0) + 1) / (len(difference) + 1)
    return out | {
        "low": float(low),
        "high": float(high),
        "p_value": float(min(1.0, 2 * min(below, above))),
    }


def balanced_accuracy(y_true, proba, *, weights=None) -> dict:
    """Balanced accuracy alone (per weight row): the comparisons' metric without the cost of
    every other classification metric; the same convention (classes present in y_true)."""
    y_true = np.asarray(y_true).astype(np.int64)
    predicted = np.asarray(proba).argmax(axis=1)
    rows = np.ones((1, len(y_true))) if weights is None else np.atleast_2d(weights)
    recalls = []
    for k in range(np.asarray(proba).shape[1]):
        support = rows @ (y_true == k)
        hits = rows @ ((y_true == k) & (predicted == k))
        with np.errstate(invalid="ignore", divide="ignore"):
            recalls.append(np.where(support > 0, hits / np.where(support > 0, support, 1), np.nan))
    value = np.nanmean(np.stack(recalls, axis=1), axis=1)
    return {"balanced_accuracy": value if weights is not None else float(value[0])}


def _metric_function(record: RunRecord, metric: str):
    from adfuse.metrics import metric_function

    if metric == "balanced_accuracy":
        return balanced_accuracy
    return metric_function(record.kind, record.classes)


def shared_subjects(a: RunRecord, b: RunRecord) -> list[str]:
    other = set(b.predictions.index)
    return [i for i in a.predictions.index if i in other]


def pair_by_seed(
    runs_a: list[RunRecord], runs_b: list[RunRecord]
) -> list[tuple[RunRecord, RunRecord]]:
    by_seed = {r.seed: r for r in runs_b}
    return [(r, by_seed[r.seed]) for r in sorted(runs_a, key=lambda r: r.seed) if r.seed in by_seed]


def compare_runs(
    runs_a: list[RunRecord], runs_b: list[RunRecord], metric: str, n_boot: int, seed: int = 0
) -> dict[str, float] | None:
    """Paired bootstrap of A - B on the seeds both have; None when they share no seed."""
    pairs = pair_by_seed(runs_a, runs_b)
    if not pairs:
        return None
    metric_fn = _metric_function(pairs[0][0], metric)
    per_seed = []
    for a, b in pairs:
        ids = shared_subjects(a, b)
        if ids:
            target = a.predictions.loc[ids, "target"].to_numpy()
            per_seed.append((target, a.outputs(ids), b.outputs(ids)))
    if not per_seed:
        return None
    result = paired_bootstrap_seeds(per_seed, metric_fn, metric, n_boot, seed)
    return result | {"n_seeds": len(per_seed)}


# ----------------------------------------------------------------------------- tables
def _groups(records: list[RunRecord]) -> dict[tuple[str, str, float], list[RunRecord]]:
    groups: dict[tuple[str, str, float], list[RunRecord]] = {}
    for record in records:
        groups.setdefault((record.label, record.task, record.fraction), []).append(record)
    return groups


BOUNDED = {"balanced_accuracy", "auc", "accuracy", "macro_f1", "ece"}  # in [0, 1]


def _summarise(values: dict[str, list], one_run_ci: dict | None) -> dict:
    out: dict[str, Any] = {}
    for metric, series in values.items():
        mean, low, high = mean_ci(series)
        if len([v for v in series if v is not None and np.isfinite(v)]) == 1 and one_run_ci:
            low, high = one_run_ci.get(metric, (math.nan, math.nan))
        if metric in BOUNDED:  # a t-interval of few seeds may leave the metric's range
            low, high = max(low, 0.0), min(high, 1.0)
        out[metric], out[f"{metric}_low"], out[f"{metric}_high"] = mean, low, high
    return out


def _value(metrics: dict, name: str) -> float:
    entry = metrics.get(name)
    if isinstance(entry, dict):
        value = entry.get("value")
        return math.nan if value is None else float(value)
    return math.nan


def leaderboard(
    records: list[RunRecord], oracle: dict[str, dict[str, float]] | None = None
) -> pd.DataFrame:
    """One row per label x task x fraction (and the oracle per task x fraction); see the module
    docstring. ``oracle``: run name -> the oracle's metrics on that run's test subjects."""
    import pandas as pd

    oracle = oracle or {}
    rows = []
    oracle_rows: dict[tuple[str, float], dict] = {}
    for (label, task, fraction), runs in _groups(records).items():
        kind = runs[0].kind
        metrics = REPORTED[kind]
        row: dict[str, Any] = {
            "label": label,
            "model": runs[0].model,
            "task": task,
            "fraction": fraction,
            "n_seeds": len(runs),
            "seeds": " ".join(str(r.seed) for r in sorted(runs, key=lambda r: r.seed)),
            "modalities": "+".join(runs[0].modalities),
            "ci": "t across seeds" if len(runs) > 1 else "bootstrap over test subjects (1 seed)",
        }
        one = runs[0].metrics if len(runs) == 1 else {}
        one_ci = {
            m: (one[m]["low"], one[m]["high"]) for m in metrics if isinstance(one.get(m), dict)
        }
        row |= _summarise({m: [_value(r.metrics, m) for r in runs] for m in metrics}, one_ci)
        main = MAIN_METRIC[kind]
        gaps = [
            oracle[r.name][main] - _value(r.metrics, main)
            for r in runs
            if r.name in oracle and main in oracle[r.name]
        ]
        row["gap_to_oracle"] = float(np.mean(gaps)) if gaps else math.nan
        row |= _efficiency(runs)
        rows.append(row)
        if gaps:
            key = (task, fraction)
            scored = [oracle[r.name] for r in runs if r.name in oracle]
            best = oracle_rows.get(key)
            if best is None or len(scored) > best["n_seeds"]:
                oracle_rows[key] = {
                    "label": "oracle",
                    "model": "oracle",
                    "task": task,
                    "fraction": fraction,
                    "n_seeds": len(scored),
                    "seeds": row["seeds"],
                    "modalities": "latent severity (truth.json)",
                    "ci": "t across seeds" if len(scored) > 1 else "one seed",
                    **_summarise({m: [s.get(m, math.nan) for s in scored] for m in metrics}, None),
                    "gap_to_oracle": 0.0,
                }
    table = pd.DataFrame(rows + list(oracle_rows.values()))
    if table.empty:
        return table
    table["_main"] = [
        row[MAIN_METRIC["classification"]]
        if MAIN_METRIC["classification"] in row and not pd.isna(row[MAIN_METRIC["classification"]])
        else -row.get("rmse", math.nan)
        for _, row in table.iterrows()
    ]
    table = table.sort_values(["task", "fraction", "_main"], ascending=[True, False, False])
    return table.drop(columns="_main").reset_index(drop=True)


def _efficiency(runs: list[RunRecord]) -> dict[str, float]:
    def mean_of(getter) -> float:
        values = [getter(r.efficiency) for r in runs]
        values = [float(v) for v in values if v is not None]
        return float(np.mean(values)) if values else math.nan

    return {
        "parameters": mean_of(lambda e: e.get("parameters_total")),
        "flops_per_subject": mean_of(lambda e: e.get("flops_per_subject")),
        "train_seconds": mean_of(lambda e: e.get("train_seconds")),
        "energy_kwh": mean_of(lambda e: (e.get("energy") or {}).get("kwh")),
        "inference_per_second": mean_of(lambda e: e.get("inference_subjects_per_second")),
    }


def pattern_table(records: list[RunRecord], keep: list[str] | None = None) -> pd.DataFrame:
    """Per label x task x fraction x test-time pattern: the main metric across seeds."""
    import pandas as pd

    rows = []
    for (label, task, fraction), runs in _groups(records).items():
        frames = [r.patterns.assign(seed=r.seed) for r in runs if r.patterns is not None]
        if not frames:
            continue
        main = MAIN_METRIC[runs[0].kind]
        patterns = pd.concat(frames)
        for pattern, part in patterns.groupby("pattern", sort=False):
            if keep is not None and pattern not in keep:
                continue
            mean, low, high = mean_ci(part[main].to_numpy())
            if len(part) == 1:
                low, high = float(part[f"{main}_low"].iloc[0]), float(part[f"{main}_high"].iloc[0])
            rows.append(
                {
                    "label": label,
                    "task": task,
                    "fraction": fraction,
                    "modalities": "+".join(runs[0].modalities),
                    "pattern": pattern,
                    "n_modalities": int(part["n_modalities"].iloc[0]),
                    "n_subjects": int(part["n"].mean()),
                    "metric": main,
                    "value": mean,
                    "low": low,
                    "high": high,
                    "n_seeds": len(part),
                }
            )
    return pd.DataFrame(rows)


def holm_resamples(n_boot: int, n_tests: int, alpha: float = 0.05) -> int:
    """Resamples enough for a bootstrap p-value (at least 2 / (B + 1)) to pass Holm's first
    threshold alpha / m: B >= 2 m / alpha, doubled for headroom; never fewer than ``n_boot``."""
    return max(n_boot, math.ceil(4 * n_tests / alpha))


def comparisons(records: list[RunRecord], n_boot: int, seed: int = 0) -> pd.DataFrame:
    """Every pair of labels of a task x fraction on their shared seeds, main metric, Holm
    (with ``holm_resamples`` resamples, so that the correction can reach significance)."""
    import itertools

    import pandas as pd

    groups = _groups(records)
    keys = sorted({(task, fraction) for _, task, fraction in groups})
    n_pairs = sum(
        math.comb(len({label for label, t, f in groups if (t, f) == key}), 2) for key in keys
    )
    n_boot = holm_resamples(n_boot, n_pairs)
    rows = []
    for task, fraction in keys:
        labels = sorted(label for label, t, f in groups if (t, f) == (task, fraction))
        for first, second in itertools.combinations(labels, 2):
            runs_a, runs_b = groups[first, task, fraction], groups[second, task, fraction]
            metric = MAIN_METRIC[runs_a[0].kind]
            result = compare_runs(runs_a, runs_b, metric, n_boot, seed)
            if result is None:
                continue
            rows.append(
                {"task": task, "fraction": fraction, "a": first, "b": second, "metric": metric}
                | result
            )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["p_holm"] = holm(table["p_value"].to_numpy())
    table["significant"] = table["p_holm"] < 0.05
    better = np.where(table["metric"].isin(LOWER_IS_BETTER), -1, 1) * table["difference"]
    table["better"] = np.where(
        table["significant"], np.where(better > 0, table["a"], table["b"]), "neither"
    )
    return table
