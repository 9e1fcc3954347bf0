"""``adfuse demo``: synthesise the default cohort (if absent), run the ``quick`` benchmark plan
(every registered model at its cpu preset, one seed, short training, on diagnosis), print the
cohort summary and the leaderboard, and the path of ``report.html``.

Layout: ``OUT/dataset`` (the cohort), ``OUT/benchmark`` (run folders, tables, claims, report),
``OUT/cache`` (prepared inputs). A second call reuses everything already finished.
"""

from __future__ import annotations

from pathlib import Path

DEMO_PLAN = "quick"


def run_demo(
    out: Path,
    subjects: int = 600,
    epochs: int | None = None,
    console=None,
    workers: int | None = None,
) -> Path:
    """Synthesise (if absent), run the quick plan (resuming), print; returns the report's path.

    ``epochs``: one epoch count for every model instead of the plan's per-model counts.
    """
    from adfuse.bench import load_plan, print_summary, run_benchmark
    from adfuse.data.synth import generate

    out = Path(out)
    dataset = out / "dataset"
    if not (dataset / "ADNIMERGE.csv").exists():
        _say(console, f"synthesising {subjects} subjects into {dataset} ...")
        generate(dataset, n_subjects=subjects, seed=0, progress=console is not None, force=True)
    if console is not None:
        from adfuse.data.cohort import load_cohort
        from adfuse.summary import print_info

        print_info(load_cohort(dataset), None, console)
    plan = load_plan(DEMO_PLAN)
    if epochs is not None:
        plan = plan.model_copy(
            update={
                "epochs": epochs,
                "models": [m.model_copy(update={"epochs": None}) for m in plan.models],
            }
        )
    result = run_benchmark(
        dataset, plan, out / "benchmark", cache_dir=out / "cache", workers=workers, console=console
    )
    if console is not None:
        print_summary(result, console)
    return result.report


def _say(console, text: str) -> None:
    if console is not None:
        console.print(text)
