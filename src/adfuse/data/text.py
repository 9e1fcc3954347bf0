"""Clinical notes: ``notes.jsonl``, one JSON object per line with PTID, VISCODE and text."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from adfuse.data.tables import read_text
from adfuse.errors import DataError

NOTE_FIELDS = ("PTID", "VISCODE", "text")


def read_notes(path: Path) -> pd.DataFrame | None:
    """A table PTID, VISCODE (lower case), text; None when there is no notes file."""
    if not path.exists():
        return None
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"line {number}: not valid JSON ({exc.msg})", file=path.name) from None
        if not isinstance(record, dict):
            raise DataError(f"line {number}: expected a JSON object", file=path.name)
        for field in NOTE_FIELDS:
            value = record.get(field)
            if not isinstance(value, str) or (field != "text" and not value.strip()):
                raise DataError(
                    f"line {number}: {field} must be a non-empty string, found {value!r}",
                    file=path.name,
                    subject=record.get("PTID") if isinstance(record.get("PTID"), str) else None,
                    field=field,
                )
        rows.append((record["PTID"].strip(), record["VISCODE"].strip().lower(), record["text"]))
    notes = pd.DataFrame(rows, columns=list(NOTE_FIELDS))
    duplicated = notes.duplicated(["PTID", "VISCODE"], keep=False)
    if duplicated.any():
        first = notes[duplicated].iloc[0]
        raise DataError(
            f"VISCODE {first['VISCODE']!r} has more than one note",
            file=path.name,
            subject=first["PTID"],
            field="VISCODE",
        )
    return notes
