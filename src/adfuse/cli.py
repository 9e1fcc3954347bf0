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
    if not debug:
        _quiet_warnings()


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
    modalities: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated modalities to write (default all), e.g. clinical,genotype,t1."
        ),
    ] = None,
    causal_snps: Annotated[
        int | None,
        typer.Option(min=0, help="Causal SNPs besides APOE, one per AD gene (default 15, <= 24)."),
    ] = None,
    causal_effect: Annotated[
        str | None,
        typer.Option(
            help="MIN,MAX |effect| per allele of the causal SNPs, in liability SD "
            "(default 0.05,0.12; larger plants stronger genetics)."
        ),
    ] = None,
) -> None:
    """Write a synthetic ADNI-like cohort (real file formats, planted ground truth)."""
    from adfuse.data.synth import generate

    chosen = _names(modalities)
    genetics = {} if causal_snps is None else {"n_causal": causal_snps}
    if causal_effect is not None:
        low, high = _effect_range(causal_effect)
        genetics |= {"causal_effect_min": low, "causal_effect_max": high}
    path = generate(
        out,
        n_subjects=subjects,
        seed=seed,
        size=size,
        force=force,
        progress=True,
        modalities=chosen,
        **genetics,
    )
    _console().print(f"wrote [bold]{path}[/bold] ({subjects} subjects, seed {seed})")


def _effect_range(text: str) -> tuple[float, float]:
    """``--causal-effect MIN,MAX`` as two numbers with 0 <= MIN <= MAX."""
    from adfuse.errors import ConfigError

    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:  # not two numbers
        low = high = float("nan")
    if not 0 <= low <= high < float("inf"):
        raise ConfigError(f"--causal-effect {text!r}: expected MIN,MAX with 0 <= MIN <= MAX")
    return low, high


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
def train(
    dataset: Annotated[Path, typer.Argument(help="A dataset folder.")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="A registered model (see `adfuse models`).")
    ],
    task: Annotated[
        str,
        typer.Option(
            "--task",
            "-t",
            help="diagnosis, cn_vs_ad, cn_vs_mci, smci_vs_pmci, stage4, progression.",
        ),
    ] = "diagnosis",
    modalities: Annotated[
        str | None,
        typer.Option(help="Comma-separated modalities (default: all the model accepts)."),
    ] = None,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    preset: Annotated[
        str, typer.Option(help="cpu (small, default) or paper (the paper's sizes).")
    ] = "cpu",
    epochs: Annotated[int, typer.Option(min=1)] = 30,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    lr: Annotated[float, typer.Option(min=0)] = 1e-3,
    fraction: Annotated[
        float, typer.Option(help="Train on this nested fraction of the training split.")
    ] = 1.0,
    class_weighted: Annotated[
        bool, typer.Option("--class-weighted", help="Class-weighted loss.")
    ] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "cpu",
    out: Annotated[
        Path | None, typer.Option(help="Run folder (default runs/<model>-<task>-s<seed>).")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty run folder.")] = False,
    cache: Annotated[Path | None, typer.Option(help="Preprocessing cache folder.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Model config override KEY=VALUE (repeatable; VALUE read as JSON when it "
            "parses), e.g. --set queries=16 --set smri_encoder=encoders/smri-s0.",
        ),
    ] = None,
) -> None:
    """Train one model on one task and evaluate it on the test split (a run folder)."""
    from adfuse.train import TrainConfig, fit

    chosen = _names(modalities)
    config = TrainConfig.build(
        overrides=_overrides(set_ or []),
        model=model,
        task=task,
        modalities=chosen,
        seed=seed,
        preset=preset,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        fraction=fraction,
        class_weighted=class_weighted,
        device=device,
    )
    run_dir = out or Path("runs") / f"{model}-{task}-s{seed}"
    fit(dataset, config, run_dir, resume=resume, force=force, cache_dir=cache)
    _print_metrics(run_dir)


def _overrides(pairs: list[str]) -> dict:
    import json

    from adfuse.errors import ConfigError

    values = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE")
        try:
            values[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            values[key.strip()] = text
    return values


@app.command()
def pretrain(
    dataset: Annotated[Path, typer.Argument(help="A dataset folder.")],
    modality: Annotated[
        str, typer.Option("--modality", help="smri, fmri or genetics: the encoder to pre-train.")
    ],
    out: Annotated[
        Path | None, typer.Option(help="Encoder folder (default encoders/<modality>-s<seed>).")
    ] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 30,
    seed: Annotated[
        int, typer.Option(min=0, help="Seed; its test splits (every task) are left out.")
    ] = 0,
    include_test: Annotated[
        bool,
        typer.Option(
            "--include-test",
            help="Also pre-train on the test subjects of --seed (off: leak-free for that seed).",
        ),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty folder.")] = False,
    cache: Annotated[Path | None, typer.Option(help="Preprocessing cache folder.")] = None,
) -> None:
    """Self-supervised masked-token pre-training of a foundation encoder (labels unused)."""
    from adfuse.pretrain import PretrainConfig
    from adfuse.pretrain import pretrain as run_pretrain

    config = PretrainConfig.build(
        modality=modality, epochs=epochs, seed=seed, exclude_test=not include_test
    )
    folder = out or Path("encoders") / f"{modality}-s{seed}"
    run_pretrain(dataset, config, folder, force=force, cache_dir=cache)
    import json

    info = json.loads((folder / "config.json").read_text())["pretraining"]
    _console().print(
        f"wrote [bold]{folder}[/bold]: {info['subjects_used']} subjects "
        f"({info['test_subjects_excluded']} test subjects left out), reconstruction loss "
        f"{info['history'][0]['reconstruction_loss']:.3f} -> "
        f"{info['history'][-1]['reconstruction_loss']:.3f} in {info['seconds']:.1f} s"
    )


@app.command()
def sweep(
    dataset: Annotated[Path, typer.Argument(help="A dataset folder.")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="A registered model (see `adfuse models`).")
    ],
    task: Annotated[str, typer.Option("--task", "-t", help="A task (see `adfuse info`).")] = (
        "diagnosis"
    ),
    modalities: Annotated[
        str | None,
        typer.Option(help="Comma-separated modalities (default: all the model accepts)."),
    ] = None,
    fractions: Annotated[
        str, typer.Option(help="Comma-separated nested training fractions.")
    ] = "0.2,0.4,0.6,0.8,1.0",
    seeds: Annotated[int, typer.Option(min=1, help="Seeds 0..N-1 (each its own split).")] = 5,
    preset: Annotated[str, typer.Option(help="cpu (default) or paper.")] = "cpu",
    epochs: Annotated[int, typer.Option(min=1)] = 30,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    lr: Annotated[float, typer.Option(min=0)] = 1e-3,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "cpu",
    out: Annotated[
        Path | None, typer.Option(help="Sweep folder (default sweeps/<model>-<task>).")
    ] = None,
    cache: Annotated[Path | None, typer.Option(help="Preprocessing cache folder.")] = None,
) -> None:
    """Train on nested fractions of the training split × seeds (SMMT's protocol); resumable.

    Writes one run folder per (fraction, seed), fractions.csv and fractions_summary.csv.
    """
    from adfuse.errors import ConfigError
    from adfuse.sweep import summarise, sweep_fractions
    from adfuse.train import TrainConfig

    try:
        chosen_fractions = [float(f) for f in fractions.split(",") if f.strip()]
    except ValueError:
        raise ConfigError(
            f"--fractions: not a comma-separated list of numbers: {fractions!r}"
        ) from None
    chosen = _names(modalities)
    config = TrainConfig.build(
        model=model,
        task=task,
        modalities=chosen,
        preset=preset,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        device=device,
    )
    folder = out or Path("sweeps") / f"{model}-{task}"
    table = sweep_fractions(
        dataset, config, chosen_fractions, list(range(seeds)), out=folder, cache_dir=cache
    )
    _print_frame(summarise(table), f"{folder}: {table['metric'].iloc[0]} across seeds")


def _names(text: str | None) -> list[str] | None:
    """A comma-separated option as a list (None when not given)."""
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def _print_frame(frame, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in frame.columns:
        table.add_column(
            str(column),
            justify="right" if frame[column].dtype.kind in "iuf" else "left",
            no_wrap=True,
        )
    for _, row in frame.iterrows():
        table.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row))
    _console().print(table)


@app.command()
def combinations(
    dataset: Annotated[Path, typer.Argument(help="A dataset folder.")],
    models: Annotated[
        str, typer.Option(help="Comma-separated models; the first is compared with the second.")
    ] = "permoe,flexmoe",
    task: Annotated[str, typer.Option("--task", "-t", help="A regression task.")] = "progression",
    modalities: Annotated[
        str | None,
        typer.Option(help="Comma-separated modalities (default: clinical and the four images)."),
    ] = None,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds 0..N-1 (each its own split).")] = 5,
    preset: Annotated[str, typer.Option(help="cpu (default) or paper.")] = "cpu",
    epochs: Annotated[int, typer.Option(min=1)] = 30,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    lr: Annotated[float, typer.Option(min=0)] = 1e-3,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "cpu",
    n_boot: Annotated[int, typer.Option(min=0, help="Bootstrap resamples for the CIs.")] = 1000,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default combinations/<task>).")
    ] = None,
    cache: Annotated[Path | None, typer.Option(help="Preprocessing cache folder.")] = None,
) -> None:
    """Every combination of T1, FLAIR, amyloid and tau at test time, models side by side (RMSE
    with 95% CIs, per ΔCDR-SB bin, wins); trains or reuses one run per model x seed.

    Writes combinations.csv, comparison.csv, summary.json, predictions.csv, combinations.png.
    """
    from adfuse.combinations import compare_combinations
    from adfuse.train import TrainConfig

    names = _names(models) or []
    chosen = _names(modalities)
    config = TrainConfig.build(
        model=names[0] if names else "permoe",
        task=task,
        modalities=chosen,
        preset=preset,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        device=device,
        n_boot=n_boot,
    )
    folder = out or Path("combinations") / task
    result = compare_combinations(
        dataset, config, names, range(seeds), folder, cache_dir=cache, n_boot=n_boot
    )
    _print_combinations(result)


def _print_combinations(result) -> None:
    import math

    from rich.table import Table

    models = result.summary["models"]
    table = Table(title=f"{result.out}: test RMSE [95% CI] per image combination")
    longest = max(len(name) for name in result.table["combination"])
    table.add_column("combination", no_wrap=True, min_width=longest)
    for model in models:
        table.add_column(f"{model} n", justify="right")
        table.add_column(f"{model} RMSE", justify="right")
    if result.comparison is not None:
        table.add_column("change %", justify="right")
        table.add_column("better")
    frame = result.table.set_index(["model", "combination"])
    compared = None if result.comparison is None else result.comparison.set_index("combination")
    for combination in dict.fromkeys(result.table["combination"]):
        cells = [combination]
        for model in models:
            row = frame.loc[(model, combination)]
            rmse = row.get("rmse", float("nan"))
            text = (
                f"{rmse:.3f} [{row['rmse_low']:.3f}, {row['rmse_high']:.3f}]"
                if math.isfinite(rmse)
                else "-"
            )
            cells += [str(int(row["n"])), text]
        if compared is not None:
            change = compared.at[combination, "rmse_change_pct"]
            shown = f"{change:+.1f}" if math.isfinite(change) else "-"
            cells += [shown, compared.at[combination, "better"]]
        table.add_row(*cells)
    console = _console()
    console.print(table)
    wins = result.summary.get("wins")
    if wins:
        first, second = models[0], models[1]
        console.print(
            f"{first} better than {second} in {wins[first]} of {wins['compared']} combinations "
            f"(paper: PerM-MoE better in 11 of 15)"
        )
        bins = result.summary["mean_bin_change_pct"]
        console.print(
            "mean RMSE change per ΔCDR-SB bin: "
            + ", ".join(
                f"{name} {value:+.1f} %" if value is not None else f"{name} -"
                for name, value in bins.items()
            )
        )
    console.print(f"wrote [bold]{result.out}[/bold] (combinations.csv, combinations.png)")


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="A run folder.")],
    dataset: Annotated[
        Path | None, typer.Option(help="The dataset (default: the one in run.json).")
    ] = None,
    cache: Annotated[Path | None, typer.Option(help="Preprocessing cache folder.")] = None,
) -> None:
    """Re-evaluate a finished run on its test split (checks the dataset fingerprint)."""
    import json

    from adfuse.train import TrainConfig, finish, load_trained, resolve_device

    session = load_trained(run, dataset, cache)
    config = TrainConfig.build(**json.loads((run / "run.json").read_text())["config"])
    previous = (
        json.loads((run / "efficiency.json").read_text())
        if (run / "efficiency.json").exists()
        else {}
    )
    finish(
        run,
        session,
        config,
        resolve_device(config.device),
        previous.get("train_seconds"),
        previous.get("energy"),
    )
    _print_metrics(run)


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="A run folder.")],
    dataset: Annotated[
        Path, typer.Argument(help="A dataset folder (new subjects; any modality may be missing).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="CSV file to write.")],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
    cache: Annotated[Path | None, typer.Option(help="Preprocessing cache folder.")] = None,
) -> None:
    """Predict every subject of a dataset with a trained run."""
    from adfuse.errors import ConfigError
    from adfuse.io import atomic_write_text
    from adfuse.train import predict_dataset

    if out.exists() and not force:
        raise ConfigError(f"{out}: exists; pass --force to replace it")
    frame = predict_dataset(run, dataset, cache)
    atomic_write_text(out, frame.to_csv(index=False))
    _console().print(f"wrote {len(frame)} predictions to [bold]{out}[/bold]")


@app.command()
def explain(
    run: Annotated[Path, typer.Argument(help="A finished run folder.")],
    dataset: Annotated[
        Path | None, typer.Option(help="The dataset (default: the one in run.json).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default RUN/explain).")] = None,
    cache: Annotated[Path | None, typer.Option(help="Preprocessing cache folder.")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing explanation folder.")
    ] = False,
) -> None:
    """Interpret a trained run: attention maps, rollout, expert use (per model)."""
    from adfuse.explain import explain_run

    folder = explain_run(run, dataset, out, cache, force=force)
    _console().print(f"wrote the explanation to [bold]{folder}[/bold]")
    truth = folder / "planted_truth.json"
    if truth.exists():  # a synthetic cohort's planted effects (R-GenIMA's explainer)
        import json

        from adfuse.explain.rollout import headline

        _console().print(headline(json.loads(truth.read_text())), markup=False)


@app.command()
def models() -> None:
    """List the registered models."""
    from rich.table import Table

    from adfuse.models import registry

    table = Table(title="Models")
    for column in ("name", "kind", "paper", "uses"):
        table.add_column(column)
    for name in registry.available():
        entry = registry.info(name)
        table.add_row(name, entry.kind, entry.paper or "-", ", ".join(entry.accepts))
    _console().print(table)


@app.command()
def benchmark(
    dataset: Annotated[Path, typer.Argument(help="A dataset folder.")],
    plan: Annotated[
        str, typer.Option(help="A preset (quick, claims, paper) or a .toml/.yaml plan file.")
    ] = "quick",
    out: Annotated[
        Path | None, typer.Option(help="Benchmark folder (default benchmark/<plan name>).")
    ] = None,
    backend: Annotated[str, typer.Option(help="local (a process pool) or ray.")] = "local",
    address: Annotated[
        str | None, typer.Option(help="Ray cluster HOST:PORT (default: start a local Ray).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Parallel runs (default: the usable cores).")
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="Override the plan's model preset: cpu or paper.")
    ] = None,
    cache: Annotated[Path | None, typer.Option(help="Preprocessing cache folder.")] = None,
) -> None:
    """Run a plan (models x tasks x seeds x fractions), resumably; write leaderboard.csv,
    claims.csv and report.html."""
    from adfuse.bench import load_plan, print_summary, run_benchmark

    chosen = load_plan(plan)
    folder = out or Path("benchmark") / chosen.name
    console = _console()
    result = run_benchmark(
        dataset,
        chosen,
        folder,
        backend=backend,
        workers=workers,
        address=address,
        cache_dir=cache,
        preset=preset,
        console=console,
    )
    print_summary(result, console)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where the demo dataset and runs go.")] = DEMO_DIR,
    subjects: Annotated[int, typer.Option("--subjects", "-n", min=40)] = 600,
    epochs: Annotated[
        int | None,
        typer.Option(min=1, help="One epoch count for every model (default: the quick plan's)."),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Parallel runs (default: the usable cores).")
    ] = None,
) -> None:
    """Synthesise the default cohort (if absent), run the quick benchmark plan (every model, one
    seed), print the leaderboard and the path of report.html."""
    from adfuse.demo import run_demo

    run_demo(out, subjects=subjects, epochs=epochs, console=_console(), workers=workers)


def _print_metrics(run_dir: Path) -> None:
    import json

    from rich.table import Table

    metrics = json.loads((run_dir / "metrics.json").read_text())
    table = Table(title=f"{run_dir}: test metrics (95% bootstrap CI)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95% CI", justify="right")

    def number(x) -> str:  # metrics.json holds undefined values (and no-CI bounds) as null
        return "-" if x is None else f"{x:.3f}"

    for name, value in metrics.items():
        if isinstance(value, dict) and "value" in value:
            interval = f"[{number(value['low'])}, {number(value['high'])}]"
            table.add_row(name, number(value["value"]), "-" if value["low"] is None else interval)
    _console().print(table)


def _quiet_warnings() -> None:
    """Warnings as one line each (``warning: ...``, no source line); a library's deprecation
    notice about its own internals is not the user's business (``--debug`` shows everything)."""
    import warnings

    from rich.markup import escape

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        _console(stderr=True).print(
            f"[yellow]warning:[/yellow] {escape(str(message))}", soft_wrap=True
        )

    warnings.showwarning = show
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)


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
