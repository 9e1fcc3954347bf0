"""A benchmark plan: which models (and ablations) on which tasks, seeds and data fractions.

A plan is a TOML or YAML file validated by pydantic (an unknown key is a one-line ConfigError), or
the name of a shipped preset (``quick``, ``claims``, ``paper``: ``adfuse/bench/plans/<name>.toml``)::

    name = "mine"
    description = "ACMCA ablations on diagnosis"
    tasks = ["diagnosis"]
    seeds = [0, 1, 2]
    fractions = [1.0]
    preset = "cpu"
    epochs = 20
    patterns = "all"              # or the test-time patterns to show, e.g. ["t1", "t1+amyloid"]
    models = ["*"]                # every registered model, default config

    [[models]]                    # an entry: one model, its own options and ablations
    model = "acmca"
    modalities = ["clinical", "genotype", "t1", "amyloid"]
    epochs = 10                   # per-model run options override the plan's
    overrides = { dim = 32 }      # model config fields (as `adfuse train --set`)
    ablations = { symmetric = { fusion = "symmetric" }, no-fnet = { fnet = false } }

Each (entry or ablation) x task x fraction x seed is one ``Job``: an ordinary run folder
``runs/<label>-<task>-f<fraction>-s<seed>`` trained by ``adfuse.train.fit``. An ablation's label is
``<label>-<ablation>``. ``"*"`` stands for every registered model that no other entry names. A
model of the five papers that is not registered in this installation is skipped (its claims are
then inconclusive); any other unknown name is an error.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from adfuse.config import StrictModel, pydantic_message
from adfuse.errors import ConfigError, did_you_mean

PRESET_PLANS = ("quick", "claims", "paper")
# Names of the papers' models: a plan may list them before they are registered here.
PAPER_MODELS = ("acmca", "smmt", "3mt", "anchored", "permoe", "flexmoe", "rgenima")
RUN_OPTIONS = (
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "patience",
    "monitor",
    "class_weighted",
)


class ModelEntry(StrictModel):
    """One model of a plan, with its own run options, config overrides and ablations."""

    model: str
    label: str | None = Field(None, pattern=r"^[A-Za-z0-9_.+-]+$")
    modalities: list[str] | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    ablations: dict[str, dict[str, Any]] = Field(default_factory=dict)
    tasks: list[str] | None = None
    fractions: list[float] | None = None
    seeds: list[int] | None = None
    preset: Literal["cpu", "paper"] | None = None
    epochs: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)
    patience: int | None = Field(None, ge=1)
    monitor: Literal["val_loss", "val_score"] | None = None
    class_weighted: bool | None = None
    explain: bool | None = None

    @field_validator("ablations")
    @classmethod
    def _ablation_names(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name in value:
            if not name or not all(c.isalnum() or c in "_.+-" for c in name):
                raise ValueError(f"ablation name {name!r}: use letters, digits, _ . + -")
        return value


class Plan(StrictModel):
    """What a benchmark runs; see the module docstring."""

    name: str = "custom"
    description: str = ""
    models: list[ModelEntry] = Field(min_length=1)  # a bare name is {model = name}
    tasks: list[str] = Field(default_factory=lambda: ["diagnosis"], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    fractions: list[float] = Field(default_factory=lambda: [1.0], min_length=1)
    preset: Literal["cpu", "paper"] = "cpu"
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    patience: int = Field(8, ge=1)
    monitor: Literal["val_loss", "val_score"] = "val_loss"
    class_weighted: bool = False
    n_boot: int = Field(1000, ge=1)
    patterns: Literal["all"] | list[str] = "all"
    explain: bool = False

    @field_validator("models", mode="before")
    @classmethod
    def _names_are_entries(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"model": item} if isinstance(item, str) else item for item in value]
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int]) -> list[int]:
        if any(seed < 0 for seed in value) or len(set(value)) != len(value):
            raise ValueError("seeds must be distinct and >= 0")
        return value

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        if any(not 0 < f <= 1 for f in value) or len(set(value)) != len(value):
            raise ValueError("fractions must be distinct, in (0, 1]")
        return value


@dataclass(frozen=True)
class Job:
    """One run of a benchmark."""

    label: str  # the leaderboard row: entry label, plus "-<ablation>"
    config: Any  # adfuse.train.TrainConfig
    explain: bool

    @property
    def name(self) -> str:
        c = self.config
        return f"{self.label}-{c.task}-f{c.fraction:g}-s{c.seed}"


@dataclass
class Expanded:
    jobs: list[Job]
    skipped: dict[str, str]  # model -> why it was left out


def load_plan(source: str | Path) -> Plan:
    """A preset name (``quick``, ``paper``) or a .toml / .yaml / .yml file -> a validated Plan."""
    text_source = str(source)
    if text_source in PRESET_PLANS:
        text = resources.files("adfuse.bench").joinpath("plans", f"{text_source}.toml").read_text()
        return parse_plan(text, f"plan '{text_source}'", "toml")
    path = Path(source)
    if not path.is_file():
        raise ConfigError(
            f"plan {text_source!r}: neither a preset ({', '.join(PRESET_PLANS)}) nor a file"
        )
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigError(f"{path}: a plan is a .toml, .yaml or .yml file")
    return parse_plan(path.read_text(encoding="utf-8-sig"), str(path), suffix.lstrip("."))


def parse_plan(text: str, source: str, fmt: str) -> Plan:
    if fmt == "toml":
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{source}: not valid TOML ({error})") from None
    else:
        from adfuse.config import require

        yaml = require("yaml", "bench", "reading a YAML plan")
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as error:
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ConfigError(f"{source}: not valid YAML ({first})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a plan is a table of keys (name, models, tasks, ...)")
    try:
        return Plan.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(pydantic_message(error, source)) from None


def expand(plan: Plan, preset: str | None = None) -> Expanded:
    """Every job of the plan (checked: models, tasks, overrides, run options)."""
    from adfuse import models, tasks
    from adfuse.train import TrainConfig

    registered = models.available()
    entries = list(plan.models)
    named = {e.model for e in entries if e.model != "*"}
    expanded_entries: list[ModelEntry] = []
    for entry in entries:
        if entry.model == "*":
            expanded_entries += [
                entry.model_copy(update={"model": name, "label": None})
                for name in registered
                if name not in named
            ]
        else:
            expanded_entries.append(entry)
    skipped: dict[str, str] = {}
    jobs: list[Job] = []
    labels: set[str] = set()
    for entry in expanded_entries:
        if entry.model not in registered:
            if entry.model in PAPER_MODELS:
                skipped[entry.model] = "model not available (not registered in this installation)"
                continue
            raise did_you_mean("model", entry.model, registered)
        label = entry.label or entry.model
        variants = {label: entry.overrides} | {
            f"{label}-{name}": {**entry.overrides, **values}
            for name, values in entry.ablations.items()
        }
        for variant_label, overrides in variants.items():
            if variant_label in labels:
                raise ConfigError(
                    f"plan {plan.name!r}: two rows are labelled {variant_label!r}; give one a label"
                )
            labels.add(variant_label)
            models.make_config(entry.model, entry.preset or preset or plan.preset, **overrides)
            for task in entry.tasks or plan.tasks:
                tasks.get(task)
                for fraction in entry.fractions or plan.fractions:
                    for seed in entry.seeds or plan.seeds:
                        options = {
                            key: getattr(entry, key)
                            if getattr(entry, key) is not None
                            else getattr(plan, key)
                            for key in RUN_OPTIONS
                        }
                        config = TrainConfig.build(
                            model=entry.model,
                            task=task,
                            modalities=entry.modalities,
                            preset=entry.preset or preset or plan.preset,
                            overrides=overrides,
                            seed=seed,
                            fraction=fraction,
                            n_boot=plan.n_boot,
                            **options,
                        )
                        explain = plan.explain if entry.explain is None else entry.explain
                        jobs.append(Job(variant_label, config, explain))
    if not jobs:
        raise ConfigError(f"plan {plan.name!r}: no job to run (every model was left out)")
    return Expanded(jobs, skipped)
