"""Reading delimited text tables strictly: UTF-8 (with or without BOM), one expected delimiter.

Every table reader goes through here so that an unreadable, mis-encoded or mis-delimited file gives
the same one-line ``DataError`` naming the file.
"""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path

import pandas as pd

from adfuse.errors import DataError

_DELIMITER_NAMES = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe"}


def read_text(path: Path, label: str | None = None) -> str:
    """A whole file as text; UTF-8 with an optional BOM, anything else is a DataError."""
    label = label or path.name
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read the file ({exc.strerror})", file=label) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); save it as UTF-8",
            file=label,
        ) from None


def read_delimited(path: Path, sep: str, label: str | None = None) -> pd.DataFrame:
    """A table with a header row and exactly ``sep`` between fields, every value read as text."""
    label = label or path.name
    text = read_text(path, label)
    if not text.strip():
        raise DataError("the file is empty", file=label)
    header = text.splitlines()[0]
    if sep not in header:
        found = [name for char, name in _DELIMITER_NAMES.items() if char in header and char != sep]
        hint = f" (found {found[0]}s)" if found else ""
        raise DataError(
            f"expected a {_DELIMITER_NAMES.get(sep, repr(sep))}-separated header{hint}",
            file=label,
        )
    try:
        with warnings.catch_warnings():
            # index_col=False: a first row with one field too many is an error, not an index
            warnings.simplefilter("error", pd.errors.ParserWarning)
            table = pd.read_csv(
                io.StringIO(text),
                sep=sep,
                dtype=str,
                keep_default_na=False,
                na_values=[""],
                skipinitialspace=False,
                index_col=False,
            )
    except pd.errors.ParserWarning:
        raise DataError(
            "malformed table: a row has more fields than the header", file=label
        ) from None
    except pd.errors.ParserError as exc:
        detail = str(exc).strip().splitlines()[-1]
        raise DataError(f"malformed table: {detail}", file=label) from None
    # pandas renames a repeated column ("MMSE" -> "MMSE.1"): check the header as written
    names = [name.strip() for name in next(csv.reader([header], delimiter=sep))]
    duplicated = [name for position, name in enumerate(names) if name in names[:position]]
    if duplicated:
        raise DataError(f"duplicate column {duplicated[0]!r}", file=label)
    table.columns = [str(c).strip() for c in table.columns]
    return table
