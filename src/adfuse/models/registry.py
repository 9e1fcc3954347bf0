"""The model registry: ``@register("name")`` on a factory; ``create``; ``available``.

A factory has the signature ``factory(spec, task, modalities, config, prepare) -> model`` and a config class
with ``paper`` and ``cpu`` presets. Registration is strict: a duplicate name is a ConfigError; an
unknown name answers with the closest registered one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from adfuse.config import pydantic_message
from adfuse.errors import ConfigError, did_you_mean
from adfuse.models.base import ModelInfo

if TYPE_CHECKING:
    from adfuse.data.cohort import ModalitySpec
    from adfuse.prepare import PrepareConfig
    from adfuse.tasks import Task

_REGISTRY: dict[str, ModelInfo] = {}
# Modules whose import registers models; imported on first use of the registry.
MODEL_MODULES = (
    "adfuse.models.baselines",
    "adfuse.models.classical",
    "adfuse.models.acmca",
    "adfuse.models.smmt",
    "adfuse.models.threemt",
    "adfuse.models.flexmoe",
    "adfuse.models.permoe",
    "adfuse.models.anchored",
    "adfuse.models.rgenima",
)
PRESETS = ("cpu", "paper")


def register(
    name: str,
    *,
    config: type[BaseModel],
    presets: dict[str, dict[str, Any]],
    kind: str = "torch",
    paper: str = "",
    accepts: tuple[str, ...] = ("*",),
    description: str = "",
) -> Callable:
    """Decorator registering a model factory under ``name`` with its config class and presets."""

    def decorate(factory: Callable) -> Callable:
        if name in _REGISTRY:
            raise ConfigError(f"model '{name}' is registered twice")
        missing = [p for p in PRESETS if p not in presets]
        if missing:
            raise ConfigError(f"model '{name}' lacks the '{missing[0]}' preset")
        _REGISTRY[name] = ModelInfo(
            name=name,
            factory=factory,
            kind=kind,
            paper=paper,
            accepts=accepts,
            description=description or (factory.__doc__ or "").strip().splitlines()[0],
            extra={"config": config, "presets": presets},
        )
        return factory

    return decorate


def _load_all() -> None:
    for module in MODEL_MODULES:
        importlib.import_module(module)


def available(kind: str | None = None) -> list[str]:
    """Every registered model name (``kind="torch"`` or ``"sklearn"`` to filter)."""
    _load_all()
    return sorted(n for n, info in _REGISTRY.items() if kind is None or info.kind == kind)


def info(name: str) -> ModelInfo:
    _load_all()
    if name not in _REGISTRY:
        raise did_you_mean("model", name, _REGISTRY)
    return _REGISTRY[name]


def make_config(name: str, preset: str = "cpu", **overrides: Any) -> BaseModel:
    """The model's config: its preset with overrides; an unknown key is a ConfigError."""
    entry = info(name)
    if preset not in PRESETS:
        raise did_you_mean("preset", preset, PRESETS)
    values = {**entry.extra["presets"][preset], **overrides}
    try:
        return entry.extra["config"].model_validate(values)
    except ValidationError as error:
        raise ConfigError(pydantic_message(error, f"model {name}")) from None


def choose_modalities(
    name: str, spec: dict[str, ModalitySpec], modalities: list[str] | None
) -> list[str]:
    """The modalities a model uses: those asked for, else every one it accepts that exists."""
    accepts = info(name).accepts
    usable = [m for m in spec if "*" in accepts or m in accepts]
    if modalities is None:
        if not usable:
            raise ConfigError(
                f"model '{name}' uses {', '.join(accepts)}; the dataset has none of them"
            )
        return usable
    for modality in modalities:
        if modality not in spec:
            raise ConfigError(f"modality '{modality}' is not in this dataset ({', '.join(spec)})")
        if "*" not in accepts and modality not in accepts:
            raise ConfigError(
                f"model '{name}' cannot use {modality} (it uses {', '.join(accepts)})"
            )
    return list(modalities)


def create(
    name: str,
    spec: dict[str, ModalitySpec],
    task: Task | str,
    preset: str = "cpu",
    modalities: list[str] | None = None,
    prepare: PrepareConfig | None = None,
    **overrides: Any,
):
    """Build a registered model for a cohort's ``spec`` and a task.

    ``prepare`` sets the input grids (volume shape, slice size, ROI size...); the engine builds the
    datasets with ``model.prepare_config()`` so the model gets the shapes it was built for.
    """
    from adfuse import tasks

    task = tasks.get(task)
    entry = info(name)
    config = make_config(name, preset, **overrides)
    chosen = choose_modalities(name, spec, modalities)
    model = entry.factory(spec, task, chosen, config, prepare)
    model.name = name
    return model
