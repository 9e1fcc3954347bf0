"""The ADNIMERGE table: one row per subject-visit, ADNIMERGE's own column names and codings.

Validated once here (columns, types, ranges, codes, duplicate visits); the rest of adfuse trusts the
normalised table this returns:

- ``PTID`` (str), ``RID`` (Int64), ``VISCODE`` (lower-case str), ``MONTH`` (Int64 months since
  baseline, from VISCODE or the ``Month`` column), ``EXAMDATE`` (datetime64, NaT when blank)
- ``DX_bl`` in {CN, SMC, EMCI, LMCI, AD}; ``DX`` in {CN, MCI, Dementia} (legacy ADNIMERGE codes such
  as ``NL`` or ``MCI to Dementia`` are mapped to the current ones)
- known numeric columns as float64, censored CSF values (``>1700``, ``<8``) at their bound,
  other columns numeric when every value parses, text otherwise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from adfuse.config import AdnimergeConfig
from adfuse.data import layout
from adfuse.data.tables import read_delimited
from adfuse.errors import DataError

DX_BL_CODES = ("CN", "SMC", "EMCI", "LMCI", "AD")
DX_CODES = ("CN", "MCI", "Dementia")
# Older ADNIMERGE releases coded DX with conversions; map them to the state at that visit.
LEGACY_DX = {
    "NL": "CN",
    "MCI to Dementia": "Dementia",
    "NL to MCI": "MCI",
    "NL to Dementia": "Dementia",
    "MCI to NL": "CN",
    "Dementia to MCI": "MCI",
    "Dementia to NL": "CN",
}
DX_FROM_DX_BL = {"CN": "CN", "SMC": "CN", "EMCI": "MCI", "LMCI": "MCI", "AD": "Dementia"}

# Ranges of the ADNI instruments (inclusive); a value outside is a DataError.
NUMERIC_RANGES: dict[str, tuple[float, float]] = {
    "AGE": (0.0, 120.0),  # AGE <= 0 is refused below: a lower bound that is exclusive
    "PTEDUCAT": (0, 30),
    "APOE4": (0, 2),
    "MMSE": (0, 30),
    "CDRSB": (0, 18),
    "ADAS11": (0, 70),
    "ADAS13": (0, 85),
    "ADASQ4": (0, 10),
    "MOCA": (0, 30),
    "FAQ": (0, 30),
    "RAVLT_immediate": (0, 75),
    "RAVLT_learning": (-15, 15),
    "RAVLT_forgetting": (-15, 15),
    "RAVLT_perc_forgetting": (-1000, 100),
    "LDELTOTAL": (0, 25),
    "DIGITSCOR": (0, 100),
    "TRABSCOR": (0, 300),
    "Month": (0, 600),
    "M": (0, 600),
    "Years_bl": (0, 50),
    "Month_bl": (0, 600),
}
CENSORED = ("ABETA", "TAU", "PTAU", "ABETA_bl", "TAU_bl", "PTAU_bl")
NUMERIC_KNOWN = (
    *NUMERIC_RANGES,
    *CENSORED,
    "RID",
    "SITE",
    "Ventricles",
    "Hippocampus",
    "WholeBrain",
    "Entorhinal",
    "Fusiform",
    "MidTemp",
    "ICV",
    "FDG",
    "PIB",
    "AV45",
    "FBB",
    "mPACCdigit",
    "mPACCtrailsB",
)
CATEGORICAL_KNOWN = {"PTGENDER": ("Male", "Female")}
IDENTIFIERS = ("RID", "PTID", "VISCODE", "EXAMDATE", "MONTH")
# Never clinical features: identifiers, labels, time, acquisition bookkeeping.
NOT_FEATURES = {
    *IDENTIFIERS,
    "DX",
    "DX_bl",
    "SITE",
    "COLPROT",
    "ORIGPROT",
    "Month",
    "M",
    "Month_bl",
    "Years_bl",
    "EXAMDATE_bl",
    "IMAGEUID",
    "IMAGEUID_bl",
    "FLDSTRENG",
    "FLDSTRENG_bl",
    "FSVERSION",
    "FSVERSION_bl",
    "update_stamp",
}
# Imaging-derived summaries belong to the imaging modalities, not to `clinical`.
IMAGING_SUMMARIES = {
    "Ventricles",
    "Hippocampus",
    "WholeBrain",
    "Entorhinal",
    "Fusiform",
    "MidTemp",
    "ICV",
    "FDG",
    "PIB",
    "AV45",
    "FBB",
}


def read_adnimerge(path: Path, config: AdnimergeConfig | None = None) -> pd.DataFrame:
    """Read and validate ADNIMERGE.csv into the normalised table described above."""
    config = config or AdnimergeConfig()
    label = path.name
    if not path.exists():
        raise DataError("the file is missing (every dataset needs its clinical table)", file=label)
    raw = read_delimited(path, ",", label)
    if raw.empty:
        raise DataError("no rows under the header (one row per subject-visit expected)", file=label)
    raw = _apply_config(raw, config, label)
    _check_required(raw, label)
    columns: dict[str, pd.Series] = {}
    ptid = (raw["PTID"] if "PTID" in raw else raw["RID"]).str.strip()
    blank = ptid.isna() | (ptid == "")
    if blank.any():
        row = int(np.flatnonzero(blank.to_numpy())[0]) + 2
        raise DataError(f"line {row}: blank subject id", file=label, field="PTID")
    columns["PTID"] = subjects = ptid

    columns["RID"] = (
        _numbers(raw, "RID", subjects, label).astype("Int64")
        if "RID" in raw
        else pd.Series(pd.NA, index=raw.index, dtype="Int64")
    )
    viscode = raw["VISCODE"].str.strip().str.lower()
    blank = viscode.isna() | (viscode == "")
    if blank.any():
        who = subjects[blank].iloc[0]
        raise DataError("blank VISCODE", file=label, subject=who, field="VISCODE")
    columns["VISCODE"] = viscode
    month = viscode.map(layout.viscode_month)
    if "Month" in raw:
        given = _numbers(raw, "Month", subjects, label)
        month = month.where(month.notna(), given)
    columns["MONTH"] = month.astype("Int64")
    columns["EXAMDATE"] = _dates(raw, subjects, label)

    for column in raw.columns:
        if column in ("PTID", "RID", "VISCODE", "EXAMDATE", "DX", "DX_bl"):
            continue
        if column in NUMERIC_KNOWN:
            columns[column] = _numbers(raw, column, subjects, label)
        elif column in CATEGORICAL_KNOWN:
            columns[column] = _categories(raw, column, CATEGORICAL_KNOWN[column], subjects, label)
        else:
            columns[column] = _maybe_numbers(raw[column])

    columns["DX_bl"] = _codes(raw, "DX_bl", DX_BL_CODES, {}, subjects, label)
    columns["DX"] = _codes(raw, "DX", DX_CODES, LEGACY_DX, subjects, label)
    table = pd.DataFrame(columns)
    if "DX" not in raw:
        baseline = table["MONTH"] == 0
        table.loc[baseline, "DX"] = table.loc[baseline, "DX_bl"].map(DX_FROM_DX_BL)

    _check_duplicates(table, label)
    _check_subject_constants(table, label)
    return table.sort_values(["PTID", "MONTH", "VISCODE"], na_position="last").reset_index(
        drop=True
    )


def clinical_features(table: pd.DataFrame, include: list[str] | None, exclude: list[str]):
    """Columns of the table used as the `clinical` modality: (numeric names, categorical names)."""
    if include is not None:
        missing = [c for c in include if c not in table]
        if missing:
            raise DataError(
                f"clinical feature {missing[0]!r} is not a column", file=layout.ADNIMERGE
            )
        candidates = list(include)
    else:
        skip = NOT_FEATURES | IMAGING_SUMMARIES | set(exclude)
        candidates = [
            c for c in table.columns if c not in skip and not (c.endswith("_bl") and c != "DX_bl")
        ]
    numeric = [c for c in candidates if pd.api.types.is_float_dtype(table[c])]
    categorical = [c for c in candidates if c in CATEGORICAL_KNOWN]
    numeric = [c for c in numeric if table[c].notna().any()]
    return numeric, categorical


def _apply_config(raw: pd.DataFrame, config: AdnimergeConfig, label: str) -> pd.DataFrame:
    renames = {}
    for adni_name, file_name in config.columns.items():
        if file_name not in raw:
            raise DataError(
                f"adfuse.toml maps {adni_name} to column {file_name!r}, which the file lacks",
                file=label,
                field=file_name,
            )
        renames[file_name] = adni_name
    raw = raw.rename(columns=renames)
    for column, mapping in config.values.items():
        if column in raw:
            keyed = {str(k): str(v) for k, v in mapping.items()}
            raw[column] = (
                raw[column]
                .map(lambda v, m=keyed: m.get(v, v) if isinstance(v, str) else v)
                .astype(raw[column].dtype)  # stays text when every value is blank
            )
    for column, value in config.defaults.items():
        if column not in raw:
            raw[column] = str(value)
    return raw


def _check_required(raw: pd.DataFrame, label: str) -> None:
    missing = []
    if "RID" not in raw and "PTID" not in raw:
        missing.append("RID or PTID")
    if "VISCODE" not in raw:
        missing.append("VISCODE")
    if "DX_bl" not in raw and "DX" not in raw:
        missing.append("DX_bl or DX")
    if missing:
        found = ", ".join(list(raw.columns)[:8]) + (" ..." if raw.shape[1] > 8 else "")
        raise DataError(
            f"required column {missing[0]} is missing (found: {found})",
            file=label,
            field=missing[0],
        )


def _first_bad(mask: pd.Series, raw: pd.DataFrame, column: str, subjects: pd.Series):
    index = mask[mask].index[0]
    visit = raw["VISCODE"].get(index, "?") if "VISCODE" in raw else "?"
    return subjects[index], visit, raw.at[index, column]


def _numbers(raw: pd.DataFrame, column: str, subjects: pd.Series, label: str) -> pd.Series:
    text = raw[column].str.strip()
    if column in CENSORED:
        text = text.str.lstrip("<>")
    values = pd.to_numeric(text, errors="coerce")
    bad = text.notna() & values.isna()
    if bad.any():
        who, visit, value = _first_bad(bad, raw, column, subjects)
        raise DataError(
            f"VISCODE {visit!r}: {column}={value!r} is not a number",
            file=label,
            subject=who,
            field=column,
        )
    values = values.astype("float64")
    infinite = np.isinf(values.to_numpy(dtype="float64", na_value=np.nan))
    if infinite.any():
        who, visit, value = _first_bad(pd.Series(infinite, index=raw.index), raw, column, subjects)
        raise DataError(
            f"VISCODE {visit!r}: {column}={value!r} is not finite",
            file=label,
            subject=who,
            field=column,
        )
    if column in NUMERIC_RANGES:
        low, high = NUMERIC_RANGES[column]
        outside = (values < low) | (values > high)
        if column == "AGE":
            outside = outside | (values <= 0)
        outside = outside.fillna(False)
        if outside.any():
            who, visit, value = _first_bad(outside, raw, column, subjects)
            bound = f"> {low:g}" if column == "AGE" else f"{low:g}–{high:g}"
            raise DataError(
                f"VISCODE {visit!r}: {column}={value!r} is outside its range ({bound})",
                file=label,
                subject=who,
                field=column,
            )
    return values


def _maybe_numbers(column: pd.Series) -> pd.Series:
    values = pd.to_numeric(column.str.strip(), errors="coerce")
    if (column.notna() & values.isna()).any():
        return column
    finite = values.to_numpy(dtype="float64", na_value=np.nan)
    if np.isinf(finite).any():
        return column
    return values.astype("float64")


def _categories(raw, column, allowed, subjects, label) -> pd.Series:
    text = raw[column].str.strip()
    bad = text.notna() & ~text.isin(allowed)
    if bad.any():
        who, visit, value = _first_bad(bad, raw, column, subjects)
        raise DataError(
            f"VISCODE {visit!r}: {column}={value!r} is not one of {', '.join(allowed)}",
            file=label,
            subject=who,
            field=column,
        )
    return text


def _codes(raw, column, allowed, legacy, subjects, label) -> pd.Series:
    if column not in raw:
        return pd.Series(pd.NA, index=raw.index, dtype="str")
    text = raw[column].str.strip().map(lambda v: legacy.get(v, v) if isinstance(v, str) else v)
    bad = text.notna() & ~text.isin(allowed)
    if bad.any():
        who, visit, value = _first_bad(bad, raw, column, subjects)
        raise DataError(
            f"VISCODE {visit!r}: {column}={value!r} is not a code ADNI uses ({', '.join(allowed)})",
            file=label,
            subject=who,
            field=column,
        )
    return text.astype("str")


def _dates(raw: pd.DataFrame, subjects: pd.Series, label: str) -> pd.Series:
    if "EXAMDATE" not in raw:
        return pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns]")
    text = raw["EXAMDATE"].str.strip()
    dates = pd.to_datetime(text, errors="coerce", format="mixed")
    bad = text.notna() & dates.isna()
    if bad.any():
        who, visit, value = _first_bad(bad, raw, "EXAMDATE", subjects)
        raise DataError(
            f"VISCODE {visit!r}: EXAMDATE={value!r} is not a date",
            file=label,
            subject=who,
            field="EXAMDATE",
        )
    return dates


def _check_duplicates(table: pd.DataFrame, label: str) -> None:
    duplicated = table.duplicated(["PTID", "VISCODE"], keep=False)
    if duplicated.any():
        row = table[duplicated].iloc[0]
        count = int(
            (
                duplicated & (table["PTID"] == row["PTID"]) & (table["VISCODE"] == row["VISCODE"])
            ).sum()
        )
        raise DataError(
            f"VISCODE {row['VISCODE']!r} appears {count} times (one row per subject-visit)",
            file=label,
            subject=row["PTID"],
            field="VISCODE",
        )


def _check_subject_constants(table: pd.DataFrame, label: str) -> None:
    for column in ("RID", "DX_bl"):
        values = table[["PTID", column]].dropna()
        counts = values.groupby("PTID")[column].nunique()
        if (counts > 1).any():
            who = counts[counts > 1].index[0]
            found = sorted(str(v) for v in values.loc[values["PTID"] == who, column].unique())
            raise DataError(
                f"{column} differs between visits ({', '.join(found)})",
                file=label,
                subject=who,
                field=column,
            )
