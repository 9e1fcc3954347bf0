"""Interpretation of trained runs: ``explain_run(RUN)`` dispatches to the model's explainer.

An explainer is registered per model name with ``@explainer("acmca")``; it receives the reloaded
session (``adfuse.train.load_trained``: cohort, task, split, model with its best weights, datasets)
and an output folder, writes arrays (``.npy``/``.csv``) and figures there (atomically), and returns a
small summary dict that ``explain_run`` saves as ``summary.json``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from adfuse.errors import ConfigError

_EXPLAINERS: dict[str, Callable] = {}
# Modules whose import registers explainers (imported on first use).
EXPLAINER_MODULES: tuple[str, ...] = (
    "adfuse.explain.attention",
    "adfuse.explain.experts",
    "adfuse.explain.rollout",
)


def explainer(*names: str) -> Callable:
    """Register ``function(session, out_dir, **options) -> dict`` for these model names."""

    def decorate(function: Callable) -> Callable:
        for name in names:
            if name in _EXPLAINERS:
                raise ConfigError(f"an explainer for '{name}' is registered twice")
            _EXPLAINERS[name] = function
        return function

    return decorate


def _load_all() -> None:
    for module in EXPLAINER_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:
                raise


def available() -> list[str]:
    _load_all()
    return sorted(_EXPLAINERS)


def explain_run(
    run_dir: str | Path,
    dataset: str | Path | None = None,
    out: str | Path | None = None,
    cache_dir: str | Path | None = None,
    force: bool = False,
    **options,
) -> Path:
    """Explain a finished run into ``out`` (default ``RUN/explain``); returns the folder.

    The folder is built as a temporary sibling and renamed into place when complete, so a killed
    explanation leaves nothing half-written; a non-empty ``out`` is replaced only with ``force``
    (and only once the new explanation is complete)."""
    from adfuse.io import atomic_directory, atomic_write_json, is_nonempty_dir
    from adfuse.runs import read_run
    from adfuse.train import load_trained

    run_dir = Path(run_dir)
    model = read_run(run_dir)["model"]
    _load_all()
    if model not in _EXPLAINERS:
        have = ", ".join(sorted(_EXPLAINERS)) or "none yet"
        raise ConfigError(f"no explainer for model '{model}' (models with one: {have})")
    out = Path(out) if out else run_dir / "explain"
    if is_nonempty_dir(out) and not force:  # before the costly reload; checked again below
        raise ConfigError(f"{out}: folder is not empty; pass --force to replace it")
    session = load_trained(run_dir, dataset, cache_dir)
    with atomic_directory(out, force=force) as building:
        summary = _EXPLAINERS[model](session, building, **options)
        atomic_write_json(building / "summary.json", summary)
    return out
