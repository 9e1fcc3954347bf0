"""The ``adfuse`` command: a thin typer layer over the Python API.

Each command parses its options, calls one API function and prints with rich. Heavy imports live
inside the command bodies so that ``adfuse --help`` answers at once. Errors: an ``AdfuseError`` is
printed as one line on stderr with exit 3 (bad data) or 2 (bad usage/config); the traceback only
with ``--debug``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="adfuse",
    help="Multimodal Alzheimer's disease diagnosis and prognosis: data, models, benchmarks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_state = {"debug": False}

DEMO_DIR = Path("demo")


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the full traceback on errors.")
    ] = False,
) -> None:
    _state["debug"] = debug


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the dataset into.")],
    subjects: Annotated[
        int, typer.Option("--subjects", "-n", min=10, help="Number of subjects.")
    ] = 600,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 0,
    size: Annotated[
        str, typer.Option(help="Image grid: small (3 mm), medium (2 mm), paper (1 mm).")
    ] = "small",
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty folder.")] = False,
) -> None:
    """Write a synthetic ADNI-like cohort (real file formats, planted ground truth)."""
    from adfuse.data.synth import generate

    path = generate(out, n_subjects=subjects, seed=seed, size=size, force=force, progress=True)
    _console().print(f"wrote [bold]{path}[/bold] ({subjects} subjects, seed {seed})")


@app.command()
def info(
    dataset: Annotated[Path, typer.Argument(help="A dataset folder (ADNIMERGE.csv, ...).")],
    task: Annotated[str | None, typer.Option(help="Also show who this task keeps and why.")] = None,
) -> None:
    """Summarise a dataset: diagnoses, modalities, availability patterns, task counts."""
    from adfuse.data.cohort import load_cohort
    from adfuse.summary import print_info

    cohort = load_cohort(dataset)
    print_info(cohort, task, _console())


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where the demo dataset and runs go.")] = DEMO_DIR,
    subjects: Annotated[int, typer.Option("--subjects", "-n", min=10)] = 600,
) -> None:
    """Synthesise the default cohort (if absent) and summarise it."""
    from adfuse.data.cohort import load_cohort
    from adfuse.data.synth import generate
    from adfuse.summary import print_info

    console = _console()
    dataset = out / "dataset"
    if not (dataset / "ADNIMERGE.csv").exists():
        console.print(f"synthesising {subjects} subjects into {dataset} ...")
        generate(dataset, n_subjects=subjects, seed=0, progress=True, force=True)
    print_info(load_cohort(dataset), None, console)


def main() -> None:
    """Entry point: run the app, map typed errors to exit codes and one line on stderr.

    Usage errors (unknown option, bad value) are typer's own: exit 2 with its message.
    """
    from adfuse.errors import AdfuseError

    try:
        app()
    except AdfuseError as error:
        if _state["debug"]:
            raise
        _console(stderr=True).print(f"[bold red]error:[/bold red] {error}", soft_wrap=True)
        sys.exit(error.exit_code)


if __name__ == "__main__":
    main()
