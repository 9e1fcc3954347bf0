"""Training-data fraction sweeps: one run per (fraction, seed), and the curve across seeds.

``sweep_fractions(dataset, TrainConfig(...), out=...)`` trains ``base_config`` on nested subsets of
each seed's train split (``TrainConfig.fraction``; val and test untouched) into
``out/<model>-f<fraction>-s<seed>/`` and writes

- ``out/fractions.csv``: one row per run (fraction, seed, the task's main metric with its 95% CI);
- ``out/fractions_summary.csv``: one row per fraction, across seeds (median, mean, 2.5 and 97.5
  percentiles, number of seeds).

A run folder whose ``run.json`` says "complete" for the same config is kept, so a killed sweep picks
up where it stopped (an interrupted run resumes); a folder holding a run of another config is an
error, never overwritten. SMMT's protocol is fractions 20-100 % × 5 seeds (the defaults).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from adfuse.errors import ConfigError
from adfuse.io import atomic_write_text, is_nonempty_dir
from adfuse.runs import RUN_FILE, read_run
from adfuse.train import TrainConfig, fit

if TYPE_CHECKING:
    import pandas as pd

FRACTIONS = (0.2, 0.4, 0.6, 0.8, 1.0)
SEEDS = (0, 1, 2, 3, 4)
MAIN_METRIC = {"classification": "balanced_accuracy", "regression": "rmse"}


def run_name(model: str, fraction: float, seed: int) -> str:
    return f"{model}-f{fraction:g}-s{seed}"


def sweep_fractions(
    dataset: str | Path,
    base_config: TrainConfig,
    fractions: tuple[float, ...] | list[float] = FRACTIONS,
    seeds: tuple[int, ...] | list[int] = SEEDS,
    out: str | Path = "fractions",
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Train every (fraction, seed) and return the per-run table (also ``out/fractions.csv``)."""
    import pandas as pd

    out = Path(out)
    configs = {}
    for fraction in fractions:
        for seed in seeds:
            values = {**base_config.model_dump(), "fraction": fraction, "seed": seed}
            configs[fraction, seed] = TrainConfig.build(**values)  # checks the fraction and seed
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for (fraction, seed), config in configs.items():
            run_dir = out / run_name(config.model, fraction, seed)
            _train_unless_done(dataset, config, run_dir, cache_dir, progress)
            rows.append(_row(run_dir, config, fraction, seed))
    except BaseException:
        if created and not any(out.iterdir()):
            out.rmdir()  # a sweep that wrote no run leaves no folder
        raise
    table = pd.DataFrame(rows)
    atomic_write_text(out / "fractions.csv", table.to_csv(index=False))
    atomic_write_text(out / "fractions_summary.csv", summarise(table).to_csv(index=False))
    return table


def _train_unless_done(dataset, config: TrainConfig, run_dir: Path, cache_dir, progress) -> None:
    if (run_dir / RUN_FILE).exists():
        run = read_run(run_dir)
        if run["config"] != config.model_dump(mode="json"):
            raise ConfigError(
                f"{run_dir}: holds a run of another config; remove it or choose another --out"
            )
        if run.get("status") == "complete":
            return
        fit(dataset, config, run_dir, resume=True, cache_dir=cache_dir, progress=progress)
        return
    # a folder without run.json died before training began: nothing in it is worth keeping
    force = is_nonempty_dir(run_dir)
    fit(dataset, config, run_dir, force=force, cache_dir=cache_dir, progress=progress)


def _row(run_dir: Path, config: TrainConfig, fraction: float, seed: int) -> dict:
    from adfuse import splits, tasks

    metrics = json.loads((run_dir / "metrics.json").read_text())
    metric = MAIN_METRIC[tasks.get(config.task).kind]
    score = metrics[metric]
    return {
        "model": config.model,
        "fraction": fraction,
        "seed": seed,
        "n_train": len(splits.Split.load(run_dir / "split.json").train),
        "metric": metric,
        "value": score["value"],
        "low": score["low"],
        "high": score["high"],
        "run": run_dir.name,
    }


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Per (model, metric, fraction): seeds, median, mean, 2.5 and 97.5 percentiles across seeds."""
    grouped = table.groupby(["model", "metric", "fraction"], sort=True)["value"]
    summary = grouped.agg(
        n_seeds="count",
        median="median",
        mean="mean",
        p2_5=lambda values: values.quantile(0.025),
        p97_5=lambda values: values.quantile(0.975),
    )
    return summary.reset_index()
