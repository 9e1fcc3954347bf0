"""FreeSurfer stats files (``aseg.stats``, ``lh.aparc.stats``, ``rh.aparc.stats``) as ROI features.

A stats file is whitespace text: ``# Measure`` lines (global measures), a ``# ColHeaders`` line,
then one row per structure. Features are named ``aseg:<StructName>:Volume_mm3``,
``lh.aparc:<StructName>:ThickAvg`` and so on, plus ``<file>:<Measure>`` for the global measures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from adfuse.data.tables import read_text
from adfuse.errors import DataError

STATS_FILES = {
    "aseg.stats": ("Volume_mm3",),
    "lh.aparc.stats": ("GrayVol", "ThickAvg", "SurfArea"),
    "rh.aparc.stats": ("GrayVol", "ThickAvg", "SurfArea"),
}


def read_stats(path: Path, label: str) -> tuple[pd.DataFrame, dict[str, float]]:
    """(structure table with numeric columns, global measures) of one stats file."""
    lines = read_text(path, label).splitlines()
    measures: dict[str, float] = {}
    header: list[str] | None = None
    rows = []
    for number, line in enumerate(lines, start=1):
        if line.startswith("# Measure"):
            parts = [p.strip() for p in line[len("# Measure") :].split(",")]
            try:
                measures[parts[1]] = float(parts[3])
            except (IndexError, ValueError):
                raise DataError(f"line {number}: malformed '# Measure' line", file=label) from None
        elif line.startswith("# ColHeaders"):
            header = line.split()[2:]
            if len(set(header)) != len(header):
                raise DataError(
                    f"line {number}: a column name repeats in '# ColHeaders'", file=label
                )
        elif line.strip() and not line.startswith("#"):
            if header is None:
                raise DataError(f"line {number}: a table row before '# ColHeaders'", file=label)
            fields = line.split()
            if len(fields) != len(header):
                raise DataError(
                    f"line {number}: {len(fields)} fields, expected {len(header)}", file=label
                )
            rows.append(fields)
    if header is None or not rows:
        raise DataError("no '# ColHeaders' table: not a FreeSurfer stats file", file=label)
    table = pd.DataFrame(rows, columns=header)
    for column in header:
        if column != "StructName":
            numbers = pd.to_numeric(table[column], errors="coerce")
            if numbers.isna().any() or not np.isfinite(numbers).all():
                bad = table[column][numbers.isna() | ~np.isfinite(numbers.fillna(0))].iloc[0]
                raise DataError(
                    f"{column}={bad!r} is not a finite number", file=label, field=column
                )
            table[column] = numbers
    return table, measures


def read_session(folder: Path, label: str) -> dict[str, float]:
    """Every feature of one session's ``stats/`` folder (whichever of the three files exist)."""
    features: dict[str, float] = {}
    for name, columns in STATS_FILES.items():
        path = folder / name
        if not path.exists():
            continue
        table, measures = read_stats(path, f"{label}/{name}")
        stem = name.removesuffix(".stats")
        for _, row in table.iterrows():
            for column in columns:
                if column in table:
                    features[f"{stem}:{row['StructName']}:{column}"] = float(row[column])
        for key, value in measures.items():
            features[f"{stem}:{key}"] = value
    return features
