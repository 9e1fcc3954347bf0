"""Every combination of the four images at test time, models side by side (PerM-MoE's Table 1).

``compare_combinations(dataset, TrainConfig(task="progression", ...), models=("permoe", "flexmoe"),
seeds=range(5), out=DIR)`` trains each model once per seed (run folders ``DIR/runs/<model>-s<seed>``;
a finished run of the same config is reused, an interrupted one resumed, another config refused),
then evaluates every run on its test split with each of the 15 non-empty subsets S of
{T1, FLAIR, amyloid PET, tau PET} forced: the subjects who have every image of S, with the other
images withheld (``Batch.without``); the clinical input (baseline CDR-SB) stays as it is. Both
models see the same subjects: the split depends on the seed and task, not on the model. The runs
skip the engine's own availability patterns (``patterns=False``): this evaluation replaces them.

Writes, atomically:
- ``combinations.csv``: one row per model x combination: RMSE and MAE over the test predictions
  pooled across seeds, with 95% percentile-bootstrap CIs (subjects resampled), the mean and SD of
  the per-seed RMSEs, and RMSE (with CI and n) within the ΔCDR-SB bins <= 0, (0, 1], > 1;
- ``comparison.csv``: one row per combination, the first model against the second: both RMSEs,
  the relative change ``100 (first - second) / second`` overall and per bin, and the winner;
- ``summary.json``: wins of the first model, changes with one image alone, mean change per bin;
- ``predictions.csv``: every (model, seed, combination, subject) prediction;
- ``combinations.png``: RMSE with CIs per combination and model, and RMSE per ΔCDR-SB bin.

The paper's claims for comparison: PerM-MoE better than Flex-MoE in 11 of 15 combinations;
-8.6 % / -4.3 % / -3.6 % RMSE with FLAIR / Aβ / tau alone; -21.5 % on small changes (0, 1].
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from adfuse.errors import ConfigError
from adfuse.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from adfuse.metrics import CDRSB_BINS
from adfuse.train import TrainConfig

if TYPE_CHECKING:
    import pandas as pd

IMAGING = ("t1", "flair", "amyloid", "tau")
DEFAULT_MODELS = ("permoe", "flexmoe")
BIN_LABELS = {"le0": "ΔCDR-SB <= 0", "0to1": "0 < ΔCDR-SB <= 1", "gt1": "ΔCDR-SB > 1"}


@dataclass
class CombinationResult:
    table: pd.DataFrame  # one row per model x combination
    comparison: pd.DataFrame | None  # one row per combination (first model vs second)
    summary: dict
    out: Path


def image_combinations(images: Iterable[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset of ``images``, largest first (15 for the four images)."""
    images = list(images)
    return [c for size in range(len(images), 0, -1) for c in itertools.combinations(images, size)]


def run_name(model: str, seed: int) -> str:
    return f"{model}-s{seed}"


def compare_combinations(
    dataset: str | Path,
    base_config: TrainConfig,
    models: Iterable[str] = DEFAULT_MODELS,
    seeds: Iterable[int] = range(5),
    out: str | Path = "combinations",
    *,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    n_boot: int = 1000,
) -> CombinationResult:
    """Train (or reuse) every model x seed, evaluate every image combination, write the tables."""
    import pandas as pd

    from adfuse import models as registry
    from adfuse import tasks
    from adfuse.data.cohort import load_cohort
    from adfuse.sweep import _train_unless_done

    models, seeds, out = list(dict.fromkeys(models)), list(dict.fromkeys(seeds)), Path(out)
    if not models or not seeds:
        raise ConfigError("combinations: give at least one model and one seed")
    for name in models:
        registry.info(name)  # an unknown name fails before anything is trained
    task = tasks.get(base_config.task)
    if task.kind != "regression":
        raise ConfigError(
            f"combinations: task {task.name!r} is a classification; the comparison reports RMSE "
            "(use --task progression)"
        )
    cohort = load_cohort(dataset)
    modalities = base_config.modalities or [
        m for m in ("clinical", *IMAGING) if m in cohort.modalities
    ]
    images = [m for m in IMAGING if m in modalities]
    if not images:
        raise ConfigError(
            f"combinations: none of {', '.join(IMAGING)} among the modalities "
            f"({', '.join(modalities)})"
        )
    configs = {
        (name, seed): TrainConfig.build(
            **{
                **base_config.model_dump(),
                "model": name,
                "seed": seed,
                "modalities": modalities,
                "patterns": False,  # the combinations below replace the run's patterns.csv
            }
        )
        for name in models
        for seed in seeds
    }
    rows = []
    for (name, seed), config in configs.items():
        run_dir = out / "runs" / run_name(name, seed)
        _train_unless_done(dataset, config, run_dir, cache_dir, progress)
        rows += _predict_combinations(run_dir, dataset, cache_dir, images, name, seed)
    predictions = pd.DataFrame(rows)
    table = summarise(predictions, image_combinations(images), n_boot, base_config.seed)
    comparison = compare(table, models[0], models[1]) if len(models) > 1 else None
    summary = _summary(table, comparison, models, seeds, images)
    atomic_write_text(out / "predictions.csv", predictions.to_csv(index=False))
    atomic_write_text(out / "combinations.csv", table.to_csv(index=False))
    if comparison is not None:
        atomic_write_text(out / "comparison.csv", comparison.to_csv(index=False))
    atomic_write_json(out / "summary.json", summary)
    atomic_write_bytes(out / "combinations.png", figure_png(table, models))
    return CombinationResult(table, comparison, summary, out)


def _predict_combinations(run_dir, dataset, cache_dir, images, model_name, seed) -> list[dict]:
    """Test predictions of one run with each image combination forced."""
    import torch

    from adfuse.evaluate import predict
    from adfuse.train import load_trained, resolve_device

    session = load_trained(run_dir, dataset, cache_dir)
    device = resolve_device(TrainConfig.build(**_run_config(run_dir)).device)
    test = session.test.batch()
    rows = []
    for kept in image_combinations(images):
        has_all = torch.stack([test.present[m].bool() for m in kept]).all(dim=0)
        index = has_all.nonzero().flatten()
        if len(index) == 0:
            continue
        chosen = test.select(index).without([m for m in images if m not in kept])
        result = predict(session.model, chosen, device=str(device))
        for subject, target, output in zip(result.ids, result.targets, result.outputs, strict=True):
            rows.append(
                {
                    "model": model_name,
                    "seed": seed,
                    "combination": "+".join(kept),
                    "id": subject,
                    "target": float(target),
                    "prediction": float(output),
                }
            )
    return rows


def _run_config(run_dir: Path) -> dict:
    from adfuse.runs import read_run

    return read_run(run_dir)["config"]


def summarise(
    predictions: pd.DataFrame, combinations: list[tuple[str, ...]], n_boot: int, seed: int
) -> pd.DataFrame:
    """One row per model x combination (every combination listed, NaN where no subject has it)."""
    import numpy as np
    import pandas as pd

    from adfuse.metrics import bootstrap_ci, regression_metrics

    rows = []
    for model in predictions["model"].unique():
        for kept in combinations:
            name = "+".join(kept)
            part = predictions[
                (predictions["model"] == model) & (predictions["combination"] == name)
            ]
            row = {"model": model, "combination": name, "n_images": len(kept)}
            row["n"], row["n_seeds"] = len(part), int(part["seed"].nunique())
            if len(part) == 0:
                rows.append(row)
                continue
            target, prediction = part["target"].to_numpy(), part["prediction"].to_numpy()
            scores = bootstrap_ci(target, prediction, regression_metrics, n_boot, seed)
            for metric in ("rmse", "mae", *(f"rmse_{b}" for b, _, _ in CDRSB_BINS)):
                row[metric], row[f"{metric}_low"], row[f"{metric}_high"] = scores[metric]
            for bin_name, _, _ in CDRSB_BINS:
                row[f"n_{bin_name}"] = int(scores[f"n_{bin_name}"][0])
            per_seed = part.groupby("seed").apply(
                lambda g: float(np.sqrt(np.mean((g["prediction"] - g["target"]) ** 2))),
                include_groups=False,
            )
            row["rmse_seed_mean"] = float(per_seed.mean())
            row["rmse_seed_sd"] = float(per_seed.std(ddof=1)) if len(per_seed) > 1 else 0.0
            rows.append(row)
    return pd.DataFrame(rows)


def compare(table: pd.DataFrame, first: str, second: str) -> pd.DataFrame:
    """Per combination: both models' RMSE, the relative change of ``first`` and the winner."""
    import numpy as np
    import pandas as pd

    a = table[table["model"] == first].set_index("combination")
    b = table[table["model"] == second].set_index("combination")
    rows = []
    for combination in a.index:
        row = {"combination": combination, "n_images": int(a.at[combination, "n_images"])}
        for metric in ("rmse", *(f"rmse_{b_}" for b_, _, _ in CDRSB_BINS)):
            mine, theirs = a.at[combination, metric], b.at[combination, metric]
            row[f"{metric}_{first}"], row[f"{metric}_{second}"] = mine, theirs
            change = 100 * (mine - theirs) / theirs if theirs and np.isfinite(theirs) else np.nan
            row[f"{metric}_change_pct"] = change
        mine, theirs = row[f"rmse_{first}"], row[f"rmse_{second}"]
        if not (np.isfinite(mine) and np.isfinite(theirs)):
            row["better"] = "n/a"
        else:
            row["better"] = first if mine < theirs else second if theirs < mine else "tie"
        rows.append(row)
    return pd.DataFrame(rows)


def _summary(table, comparison, models, seeds, images) -> dict:
    import numpy as np

    summary: dict = {
        "models": models,
        "seeds": seeds,
        "images": images,
        "combinations": len(image_combinations(images)),
        "paper": "PerM-MoE better in 11 of 15; -8.6/-4.3/-3.6 % RMSE with FLAIR/Aβ/tau alone; "
        "-21.5 % on 0 < ΔCDR-SB <= 1",
    }
    if comparison is None:
        return summary
    first, second = models[0], models[1]
    decided = comparison[comparison["better"] != "n/a"]
    summary["wins"] = {
        first: int((decided["better"] == first).sum()),
        second: int((decided["better"] == second).sum()),
        "compared": len(decided),
    }
    singles = comparison[comparison["n_images"] == 1].set_index("combination")
    summary["single_image_change_pct"] = {
        m: _finite(singles.at[m, "rmse_change_pct"]) for m in singles.index
    }
    summary["mean_bin_change_pct"] = {
        bin_name: _finite(np.nanmean(comparison[f"rmse_{bin_name}_change_pct"].to_numpy(float)))
        if comparison[f"rmse_{bin_name}_change_pct"].notna().any()
        else None
        for bin_name, _, _ in CDRSB_BINS
    }
    return summary


def _finite(value) -> float | None:
    import math

    value = float(value)
    return value if math.isfinite(value) else None


def _column_mean(rows, column: str) -> float:
    import numpy as np

    if column not in rows or rows[column].isna().all():
        return float("nan")
    return float(np.nanmean(rows[column].to_numpy(float)))


def figure_png(table: pd.DataFrame, models: list[str]) -> bytes:
    """RMSE with 95% CIs per combination and model (left); per ΔCDR-SB bin, the mean over the
    combinations of their RMSE within the bin (right)."""
    import numpy as np
    from matplotlib.figure import Figure

    combos = list(dict.fromkeys(table["combination"]))
    figure = Figure(figsize=(14, 4.8), layout="constrained")
    left, right = figure.subplots(1, 2, width_ratios=(3, 1))
    width = 0.8 / len(models)
    positions = np.arange(len(combos))
    for number, model in enumerate(models):
        rows = table[table["model"] == model].set_index("combination").reindex(combos)
        value = rows["rmse"].to_numpy(float) if "rmse" in rows else np.full(len(combos), np.nan)
        low = rows["rmse_low"].to_numpy(float) if "rmse_low" in rows else value
        high = rows["rmse_high"].to_numpy(float) if "rmse_high" in rows else value
        error = np.nan_to_num(np.vstack([value - low, high - value]), nan=0.0)
        left.bar(positions + number * width, value, width, yerr=error, capsize=2, label=model)
        bins = [_column_mean(rows, f"rmse_{b}") for b, _, _ in CDRSB_BINS]
        right.bar(np.arange(len(CDRSB_BINS)) + number * width, bins, width, label=model)
    left.set_xticks(positions + width * (len(models) - 1) / 2, combos, rotation=60, ha="right")
    left.set_ylabel("RMSE (ΔCDR-SB), 95% CI")
    left.set_title("Test RMSE with each image combination")
    left.legend()
    right.set_xticks(
        np.arange(len(CDRSB_BINS)) + width * (len(models) - 1) / 2,
        [BIN_LABELS[b] for b, _, _ in CDRSB_BINS],
        rotation=20,
        ha="right",
    )
    right.set_title("RMSE per ΔCDR-SB bin\n(mean over combinations)")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
