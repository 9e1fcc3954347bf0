"""``adfuse benchmark``: every model x task x seed x data fraction of a plan, one folder.

``run_benchmark(dataset, "quick", out)`` runs the plan's jobs (``bench.runner``: a local process
pool or Ray) as ordinary run folders and writes, each file atomically::

    OUT/ plan.json                 the validated plan and its jobs
         runs/<label>-<task>-f<fraction>-s<seed>/   one run folder per job
         jobs.csv                  per job: status (complete, skipped, failed), seconds, error
         leaderboard.csv           label x task at the largest fraction, + the oracle row
         leaderboard_fractions.csv the same for every fraction
         leaderboard_patterns.csv  per test-time availability pattern
         comparisons.csv           paired comparisons on the same subjects, Holm-corrected
         claims.csv                the papers' claims re-tested (``bench.claims``)
         figures/                  the report's figures as PNG files, numbered in page order
         report.html               everything above, with figures, in one offline page

Statistics: ``bench.tables``; the oracle: ``bench.oracle``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adfuse.bench.plan import Expanded, Plan, expand, load_plan
from adfuse.io import atomic_directory, atomic_write_json, atomic_write_text

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["BenchmarkResult", "expand", "load_plan", "print_summary", "run_benchmark", "summarise"]


@dataclass
class BenchmarkResult:
    out: Path
    leaderboard: pd.DataFrame
    claims: pd.DataFrame
    jobs: pd.DataFrame
    report: Path


def run_benchmark(
    dataset: str | Path,
    plan: str | Path | Plan,
    out: str | Path,
    *,
    backend: str = "local",
    workers: int | None = None,
    address: str | None = None,
    cache_dir: str | Path | None = None,
    preset: str | None = None,
    console: Any = None,
) -> BenchmarkResult:
    """Run (or continue) a benchmark and write its tables and report into ``out``."""
    import pandas as pd

    from adfuse.bench.runner import run_jobs
    from adfuse.data.cohort import load_cohort

    dataset, out = Path(dataset), Path(out)
    plan = plan if isinstance(plan, Plan) else load_plan(plan)
    expanded = expand(plan, preset)
    cohort = load_cohort(dataset)
    _check_modalities(expanded, cohort)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        out / "plan.json",
        {
            "plan": plan.model_dump(mode="json"),
            "skipped": expanded.skipped,
            "jobs": [{"name": j.name, "label": j.label} for j in expanded.jobs],
        },
    )
    cache = Path(cache_dir) if cache_dir else out / "cache"
    calls = [
        {
            "dataset": str(dataset),
            "config": job.config.model_dump(mode="json"),
            "run_dir": str(out / "runs" / job.name),
            "cache_dir": str(cache),
            "explain": job.explain,
        }
        for job in expanded.jobs
    ]
    total = len(calls)
    done = [0]

    def report_progress(result: dict) -> None:
        done[0] += 1
        if console is not None:
            colour = {"failed": "red", "skipped": "dim"}.get(result["status"], "green")
            extra = f" {result['error']}" if result["error"] else ""
            console.print(
                f"[{done[0]}/{total}] {result['run']}: [{colour}]{result['status']}[/{colour}] "
                f"({result['seconds']:.1f} s){extra}",
                soft_wrap=True,
            )

    if console is not None:
        skipped = f"; left out: {', '.join(expanded.skipped)}" if expanded.skipped else ""
        console.print(f"benchmark {plan.name!r}: {total} runs, backend {backend}{skipped}")
    results = run_jobs(calls, backend, workers, address, report_progress)
    jobs = pd.DataFrame(results, columns=["run", "status", "seconds", "explained", "error"])
    atomic_write_text(out / "jobs.csv", jobs.to_csv(index=False))
    return summarise(out, plan, expanded, jobs, dataset, cohort, cache)


def _check_modalities(expanded: Expanded, cohort) -> None:
    """Fail before training when a model cannot use the modalities the plan gives it."""
    from adfuse.models import registry

    seen = set()
    for job in expanded.jobs:
        key = (job.config.model, tuple(job.config.modalities or ()))
        if key not in seen:
            seen.add(key)
            registry.choose_modalities(job.config.model, cohort.spec, job.config.modalities)


def summarise(out: Path, plan: Plan, expanded: Expanded, jobs, dataset: Path, cohort, cache):
    """Tables, claims and the report from the finished runs of ``expanded``."""
    from adfuse import models
    from adfuse.bench import claims as claims_module
    from adfuse.bench import report, tables

    finished = set(jobs.loc[jobs["status"] != "failed", "run"]) if not jobs.empty else set()
    records = [
        tables.read_record(job, out / "runs" / job.name)
        for job in expanded.jobs
        if job.name in finished
    ]
    oracle = _oracle(records, dataset, cohort)
    board_all = tables.leaderboard(records, oracle)
    if board_all.empty:
        board = board_all
    else:
        largest = board_all.groupby("task")["fraction"].transform("max")
        board = board_all[board_all["fraction"] == largest].reset_index(drop=True)
    keep = None if plan.patterns == "all" else list(plan.patterns)
    patterns = tables.pattern_table(records, keep)
    compared = tables.comparisons(records, plan.n_boot)
    claims = claims_module.evaluate_claims(
        records, models.available(), plan.n_boot, dataset, cache, out / "claims_data"
    )
    for name, frame in (
        ("leaderboard.csv", board),
        ("leaderboard_fractions.csv", board_all),
        ("leaderboard_patterns.csv", patterns),
        ("comparisons.csv", compared),
        ("claims.csv", claims),
    ):
        atomic_write_text(out / name, frame.to_csv(index=False))
    figures: dict[str, bytes] = {}
    page = report.render(
        plan,
        board,
        patterns,
        board_all,
        compared,
        claims,
        records,
        jobs,
        expanded.skipped,
        str(dataset),
        figures,
    )
    with atomic_directory(out / "figures", force=True) as folder:  # ours: rebuilt every call
        for name, data in figures.items():
            (folder / name).write_bytes(data)
    atomic_write_text(out / "report.html", page)
    return BenchmarkResult(out, board, claims, jobs, out / "report.html")


def _oracle(records, dataset: Path, cohort) -> dict[str, dict[str, float]]:
    """Run name -> the oracle's scores on that run's test subjects (synthetic cohorts only)."""
    import numpy as np

    from adfuse import tasks
    from adfuse.bench import oracle

    truth = oracle.load_truth(dataset)
    if truth is None:
        return {}
    priors: dict[str, np.ndarray] = {}
    scores = {}
    for record in records:
        if not oracle.has_oracle(record.task):
            continue
        if record.task not in priors:
            labels = tasks.get(record.task).targets(cohort)["target"].to_numpy()
            counts = np.bincount(labels, minlength=len(record.classes)).astype(float)
            priors[record.task] = counts / counts.sum()
        ids = list(record.predictions.index)
        scores[record.name] = oracle.oracle_scores(
            truth,
            record.task,
            ids,
            record.predictions["target"].to_numpy(),
            record.classes,
            priors[record.task],
        )
    return scores


def print_summary(result: BenchmarkResult, console) -> None:
    """The leaderboard (main metric with CI, gap to the oracle, cost), claims and report path."""
    import math

    from rich.table import Table

    board = result.leaderboard
    for task, part in board.groupby("task", sort=False) if not board.empty else []:
        regression = "rmse" in part and part["rmse"].notna().any()
        metric = "rmse" if regression else "balanced_accuracy"
        seeds = int(part["n_seeds"].max())
        title = f"{task}: test {metric.replace('_', ' ')} ({seeds} seed{'s' if seeds > 1 else ''})"
        table = Table(title=title)
        for column in ("row", "score", "95% CI", "gap to oracle", "params", "train s"):
            table.add_column(column, justify="left" if column == "row" else "right", no_wrap=True)
        for _, row in part.iterrows():
            low, high = row[f"{metric}_low"], row[f"{metric}_high"]
            gap = row.get("gap_to_oracle", math.nan)
            params = row.get("parameters", math.nan)
            seconds = row.get("train_seconds", math.nan)
            table.add_row(
                str(row["label"]),
                f"{row[metric]:.3f}",
                f"{low:.2f}–{high:.2f}" if math.isfinite(low) else "-",
                "-" if not math.isfinite(gap) or row["label"] == "oracle" else f"{gap:+.3f}",
                "-" if not math.isfinite(params) else f"{int(params):,}",
                "-" if not math.isfinite(seconds) else f"{seconds:.1f}",
            )
        console.print(table)
    counts = result.claims["verdict"].value_counts().to_dict() if not result.claims.empty else {}
    failed = int((result.jobs["status"] == "failed").sum()) if not result.jobs.empty else 0
    console.print(
        f"claims: {counts.get('holds', 0)} hold, {counts.get('does not hold', 0)} do not hold, "
        f"{counts.get('inconclusive', 0)} inconclusive (claims.csv)"
        + (f"; [red]{failed} runs failed[/red] (jobs.csv)" if failed else "")
    )
    console.print(f"report: [bold]{result.report.resolve()}[/bold]")
