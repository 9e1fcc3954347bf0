"""``adfuse demo``: the synthetic default cohort, the baselines on ``diagnosis``, a leaderboard."""

from __future__ import annotations

import json
from pathlib import Path

# The fusion runs use five modalities so that the demo stays within a few minutes on 2 CPU cores;
# `adfuse train` without --modalities uses every modality the model accepts.
FUSION = ["clinical", "genotype", "t1", "amyloid", "fdg"]
DEMO_RUNS: tuple[tuple[str, str, list[str] | None], ...] = (
    # (run name, model, modalities)
    ("clinical-only", "unimodal", ["clinical"]),
    ("t1-only", "unimodal", ["t1"]),
    ("early-fusion", "early_fusion", FUSION),
    ("late-fusion", "late_fusion", FUSION),
    ("logreg", "logreg", FUSION),
    ("gboost", "gboost", FUSION),
)
DEMO_EPOCHS = 10


def run_demo(out: Path, subjects: int = 600, epochs: int = DEMO_EPOCHS, console=None) -> Path:
    """Synthesise (if absent), train every demo run (resuming finished ones), print the board."""
    from adfuse.data.synth import generate
    from adfuse.runs import read_run
    from adfuse.train import TrainConfig, fit

    dataset = out / "dataset"
    if not (dataset / "ADNIMERGE.csv").exists():
        _say(console, f"synthesising {subjects} subjects into {dataset} ...")
        generate(dataset, n_subjects=subjects, seed=0, progress=True, force=True)
    if console is not None:
        from adfuse.data.cohort import load_cohort
        from adfuse.summary import print_info

        print_info(load_cohort(dataset), None, console)
    runs = out / "runs"
    for name, model, modalities in DEMO_RUNS:
        run_dir = runs / name
        config = TrainConfig.build(
            model=model, task="diagnosis", modalities=modalities, epochs=epochs, seed=0, n_boot=500
        )
        done = (run_dir / "run.json").exists() and read_run(run_dir).get("status") == "complete"
        if not done:
            _say(console, f"training {name} ({model}) ...")
            fit(dataset, config, run_dir, force=True, cache_dir=out / "cache")
    board = leaderboard(runs)
    if console is not None:
        print_leaderboard(board, console, title="diagnosis (CN / MCI / AD), test split, 95% CI")
    return runs


def leaderboard(runs: Path):
    """One row per run folder under ``runs``: main metrics with CIs, params, train time."""
    import pandas as pd

    rows = []
    for run_dir in sorted(p for p in runs.iterdir() if (p / "metrics.json").exists()):
        run = json.loads((run_dir / "run.json").read_text())
        metrics = json.loads((run_dir / "metrics.json").read_text())
        efficiency = json.loads((run_dir / "efficiency.json").read_text())
        row = {
            "run": run_dir.name,
            "model": run["model"],
            "modalities": _short(run["modalities"]),
        }
        for key in ("balanced_accuracy", "auc", "macro_f1", "rmse", "mae", "r2"):
            if key in metrics:
                row[key] = metrics[key]["value"]
                row[f"{key}_low"] = metrics[key]["low"]
                row[f"{key}_high"] = metrics[key]["high"]
        row["parameters"] = efficiency.get("parameters_total")
        row["train_seconds"] = efficiency.get("train_seconds")
        rows.append(row)
    return pd.DataFrame(rows)


def print_leaderboard(board, console, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("run", no_wrap=True)
    table.add_column("modalities")
    metrics = [m for m in ("balanced_accuracy", "auc", "macro_f1", "rmse", "mae") if m in board]
    for metric in metrics:
        table.add_column(
            metric.replace("balanced_accuracy", "bal. acc.").replace("_", " "),
            justify="right",
            no_wrap=True,
        )
    table.add_column("params", justify="right")
    table.add_column("train s", justify="right")
    main = metrics[0] if metrics else None
    ordered = board.sort_values(main, ascending=main in ("rmse", "mae")) if main else board
    for _, row in ordered.iterrows():
        cells = [row["run"], row["modalities"]]
        for metric in metrics:
            low, high = row[metric + "_low"], row[metric + "_high"]
            cells.append(f"{row[metric]:.2f} ({low:.2f}–{high:.2f})")
        params = row.get("parameters")
        cells.append("-" if params is None or params != params else f"{int(params):,}")
        seconds = row.get("train_seconds")
        cells.append("-" if seconds is None or seconds != seconds else f"{seconds:.1f}")
        table.add_row(*cells)
    console.print(table)


SHORT = {"clinical": "clin", "genotype": "snp", "amyloid": "amy", "freesurfer": "fs"}


def _short(modalities: list[str]) -> str:
    return "+".join(SHORT.get(m, m) for m in modalities)


def _say(console, text: str) -> None:
    if console is not None:
        console.print(text)
