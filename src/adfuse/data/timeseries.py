"""Resting-state fMRI region time series: a TSV of time points x regions (header = region names)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from adfuse.data.tables import read_delimited, read_text
from adfuse.errors import DataError


def read_header(path: Path, label: str) -> list[str]:
    """The region names of a time-series file (its header line), checked for duplicates."""
    text = read_text(path, label)
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise DataError("the file is empty", file=label)
    if "\t" not in lines[0]:
        raise DataError("expected a tab-separated header of region names", file=label)
    names = [name.strip() for name in lines[0].split("\t")]
    if len(set(names)) != len(names):
        raise DataError("duplicate region name in the header", file=label)
    return names


def read_timeseries(path: Path, label: str, subject: str | None = None) -> np.ndarray:
    """The series as float32 [time, region]; non-numbers, NaN and Inf are DataErrors."""
    table = read_delimited(path, "\t", label)
    if len(table) < 2:
        raise DataError(
            f"{len(table)} time points; at least 2 are needed", file=label, subject=subject
        )
    try:  # fast path: every field a finite number (float() allows the surrounding blanks)
        fast = table.to_numpy(dtype=object).astype(np.float64)
        if np.isfinite(fast).all():
            return fast.astype(np.float32)
    except (TypeError, ValueError):
        pass  # the column-wise pass below names the first bad field
    values = table.apply(lambda column: pd.to_numeric(column.str.strip(), errors="coerce"))
    bad = values.isna().to_numpy() | ~np.isfinite(values.to_numpy(dtype="float64", na_value=np.nan))
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        raw = table.iat[row, column]
        shown = "an empty field" if pd.isna(raw) else repr(raw)
        raise DataError(
            f"time point {row + 1}: {shown} is not a finite number",
            file=label,
            subject=subject,
            field=str(table.columns[column]),
        )
    return values.to_numpy(dtype=np.float32)
