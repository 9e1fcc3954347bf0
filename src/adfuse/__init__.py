"""adfuse: multimodal Alzheimer's disease diagnosis and prognosis under one data contract.

``import adfuse`` is fast: submodules load on first use (``adfuse.synth``, ``adfuse.tasks``...).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_SUBMODULES = {
    "synth",
    "tasks",
    "splits",
    "prepare",
    "models",
    "train",
    "evaluate",
    "metrics",
    "explain",
    "bench",
    "report",
    "errors",
    "config",
    "data",
}

if TYPE_CHECKING:
    from adfuse.data.cohort import Cohort, load_cohort  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in ("load_cohort", "Cohort"):
        from adfuse.data import cohort

        return getattr(cohort, name)
    if name in _SUBMODULES:
        return importlib.import_module(f"adfuse.{name}")
    raise AttributeError(f"module 'adfuse' has no attribute {name!r}")


__all__ = ["Cohort", "load_cohort", "__version__", *sorted(_SUBMODULES)]
