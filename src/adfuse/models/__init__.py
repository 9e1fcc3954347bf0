"""Models: a registry of factories, shared encoders and layers, one file per paper.

``adfuse.models.create(name, cohort.spec, task, preset="cpu")`` and ``adfuse.models.available()``.
"""

from adfuse.models.registry import available, create, info, make_config, register

__all__ = ["available", "create", "info", "make_config", "register"]
