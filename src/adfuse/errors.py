"""Typed errors. The CLI maps them to exit codes; nothing else catches broad exceptions.

``DataError`` (exit 3) is bad input data; ``ConfigError`` (exit 2) is a bad option, name or config;
``DataLeakageError`` is a split or a fitted statistic that touches subjects it must not;
``TrainingDivergedError`` (a ``ConfigError``: the remedy is most often a lower learning rate) is a
training loss, or a validation loss at every epoch, that is not finite.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class AdfuseError(Exception):
    """Base of every error adfuse raises on purpose."""

    exit_code = 1


class DataError(AdfuseError):
    """Input data that cannot be used as it is: names the file, subject and field."""

    exit_code = 3

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        subject: str | None = None,
        field: str | None = None,
    ) -> None:
        self.file, self.subject, self.field = file, subject, field
        parts = [str(file)] if file else []
        if subject:
            parts.append(f"subject {subject}")
        if field:
            parts.append(str(field))
        super().__init__(": ".join([*parts, message]))


class ConfigError(AdfuseError):
    """A bad option, name, config key or plan."""

    exit_code = 2


class DataLeakageError(AdfuseError):
    """Subjects shared between splits, or a statistic fitted on subjects outside train."""

    exit_code = 3


class TrainingDivergedError(ConfigError):
    """A non-finite training loss, or no epoch with a finite validation loss to keep as best."""


def did_you_mean(kind: str, name: str, options: Iterable[str]) -> ConfigError:
    """A ConfigError for an unknown name, with the closest option and the full list."""
    options = sorted(options)
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown {kind} '{name}'.{hint} Choose from: {', '.join(options)}")
