"""Readable terminal summaries of a cohort (``adfuse info``) with rich tables."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from adfuse.data.cohort import Cohort

MAX_PATTERNS = 15


def availability_patterns(cohort: Cohort) -> list[tuple[str, int]]:
    """Modality-availability patterns at baseline, most frequent first: ('t1+amyloid', n)."""
    availability = cohort.availability
    names = availability.apply(
        lambda row: "+".join(m for m in availability.columns if row[m]) or "(none)", axis=1
    )
    counts = names.value_counts()
    return [(str(pattern), int(n)) for pattern, n in counts.items()]


def print_info(cohort: Cohort, task_name: str | None, console: Console) -> None:
    from rich.table import Table

    from adfuse import tasks

    baseline = cohort.baseline
    console.print(
        f"[bold]{cohort.root}[/bold]: {len(cohort.subjects)} subjects, {len(cohort.table)} visits"
    )

    table = Table(title="Subjects per baseline diagnosis")
    table.add_column("DX_bl")
    table.add_column("DX at baseline")
    table.add_column("subjects", justify="right")
    grouped = baseline.groupby(["DX_bl", "DX"], dropna=False).size()
    for (dx_bl, dx), n in grouped.items():
        table.add_row(str(dx_bl), str(dx), str(int(n)))
    console.print(table)

    table = Table(title="Modalities (subjects with the modality at baseline)")
    table.add_column("modality")
    table.add_column("kind")
    table.add_column("shape / features")
    table.add_column("subjects", justify="right")
    table.add_column("%", justify="right")
    counts = cohort.availability.sum()
    for modality, spec in cohort.spec.items():
        n = int(counts.get(modality, 0))
        shape = "x".join(str(s) for s in spec.shape) or "-"
        table.add_row(modality, spec.kind, shape, str(n), f"{100 * n / len(baseline):.0f}")
    console.print(table)

    patterns = availability_patterns(cohort)
    table = Table(title=f"Availability patterns at baseline ({len(patterns)} distinct)")
    table.add_column("modalities present")
    table.add_column("subjects", justify="right")
    for pattern, n in patterns[:MAX_PATTERNS]:
        table.add_row(pattern, str(n))
    if len(patterns) > MAX_PATTERNS:
        rest = sum(n for _, n in patterns[MAX_PATTERNS:])
        table.add_row(f"... {len(patterns) - MAX_PATTERNS} more patterns", str(rest))
    console.print(table)

    names = [task_name] if task_name else tasks.available()
    table = Table(title="Tasks")
    table.add_column("task")
    table.add_column("kept", justify="right")
    table.add_column("targets")
    table.add_column("excluded")
    for name in names:
        task = tasks.get(name)
        described = task.describe(cohort)
        table.add_row(
            name,
            str(described["n_kept"]),
            _targets_text(described),
            _exclusions_text(described),
        )
    console.print(table)
    if task_name:
        console.print(f"[bold]{task_name}[/bold]: {tasks.get(task_name).description}")
    for notice in cohort.warnings:
        console.print(f"[yellow]note:[/yellow] {notice}")


def _targets_text(described: dict) -> str:
    if "classes" in described:
        return ", ".join(f"{name} {n}" for name, n in described["classes"].items())
    target = described.get("target", {})
    return ", ".join(
        f"{key} {value:.2f}" if isinstance(value, float) else f"{key} {value}"
        for key, value in target.items()
    )


def _exclusions_text(described: dict) -> str:
    excluded = described.get("excluded", {})
    return "; ".join(f"{reason}: {n}" for reason, n in excluded.items()) or "-"
