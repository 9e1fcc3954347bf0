"""Tasks: what a model predicts for each subject, and who is kept. ``get(name)``, ``available()``.

A Task turns a Cohort into targets indexed by PTID. The inputs are always the subject's baseline
visit (``input_visit``); a label may look ahead (conversion, progression) but never feeds an input.
A subject a task cannot label is listed by ``exclusions`` with its reason, never dropped silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd

from adfuse.errors import DataError, did_you_mean

if TYPE_CHECKING:
    from adfuse.data.cohort import Cohort

CONVERSION_MONTHS = 36  # sMCI/pMCI horizon, as in most ADNI conversion studies
PROGRESSION_MONTH = 24
DX_NAMES = {"CN": "CN", "MCI": "MCI", "Dementia": "AD"}
STAGE4_FROM_DX_BL = {"CN": "CN", "SMC": "SMC", "EMCI": "MCI", "LMCI": "MCI", "AD": "AD"}
MIN_PER_CLASS = 2
MIN_REGRESSION = 10

# A rule returns (kept: class name or value per PTID, excluded: reason per PTID).
Rule = Callable[["Cohort"], tuple[pd.Series, pd.Series]]


@dataclass(frozen=True)
class Task:
    """A named target over subjects: its kind, classes, and the rule that keeps and labels them."""

    name: str
    kind: str  # classification | regression
    classes: tuple[str, ...]
    description: str
    rule: Rule = field(repr=False, compare=False)
    input_visit: str = "bl"

    def targets(self, cohort: Cohort) -> pd.DataFrame:
        """One row per kept subject (index PTID, sorted): ``target``, ``label``, ``viscode``."""
        kept, _ = self.rule(cohort)
        kept = kept.sort_index()
        if self.kind == "classification":
            index_of = {name: i for i, name in enumerate(self.classes)}
            target = kept.map(index_of).astype("int64")
            label = kept.astype(str)
        else:
            target = kept.astype("float64")
            label = target.map(lambda value: f"{value:g}")
        out = pd.DataFrame(
            {
                "target": target,
                "label": label,
                "viscode": cohort.baseline.loc[kept.index, "VISCODE"].astype(str),
            },
            index=pd.Index(kept.index, name="PTID"),
        )
        return out

    def exclusions(self, cohort: Cohort) -> pd.DataFrame:
        """Every subject of the cohort not kept: columns ``PTID``, ``reason`` (sorted by PTID)."""
        _, excluded = self.rule(cohort)
        excluded = excluded.sort_index()
        return pd.DataFrame(
            {"PTID": excluded.index.astype(str), "reason": excluded.to_numpy(dtype=str)}
        )

    def describe(self, cohort: Cohort) -> dict:
        """Who is kept (per class, or a summary of the target) and how many are left out, and why."""
        targets = self.targets(cohort)
        reasons = self.exclusions(cohort)["reason"].value_counts()
        excluded = {
            reason: int(count)
            for reason, count in sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
        }
        out = {
            "task": self.name,
            "kind": self.kind,
            "description": self.description,
            "n_subjects": len(cohort.subjects),
            "n_kept": len(targets),
            "n_excluded": int(reasons.sum()),
        }
        if self.kind == "classification":
            counts = targets["target"].value_counts()
            out["classes"] = {name: int(counts.get(i, 0)) for i, name in enumerate(self.classes)}
        else:
            out["target"] = _summary(targets["target"])
        out["excluded"] = excluded
        return out

    def check_enough(self, targets: pd.DataFrame, minimum: int | None = None) -> None:
        """DataError unless every class has ``minimum`` subjects (regression: ``minimum`` in all).

        Defaults: 2 per class for classification, 10 subjects for regression.
        """
        if self.kind == "classification":
            minimum = MIN_PER_CLASS if minimum is None else minimum
            counts = targets["target"].value_counts()
            for index, name in enumerate(self.classes):
                count = int(counts.get(index, 0))
                if count < minimum:
                    raise DataError(
                        f"task {self.name!r}: class {name!r} has {count} subject"
                        f"{'' if count == 1 else 's'} after exclusions; at least {minimum} "
                        f"are needed (see `adfuse info --task {self.name}`)"
                    )
        else:
            minimum = MIN_REGRESSION if minimum is None else minimum
            if len(targets) < minimum:
                raise DataError(
                    f"task {self.name!r}: {len(targets)} subjects have a target; at least "
                    f"{minimum} are needed (see `adfuse info --task {self.name}`)"
                )

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "classes": list(self.classes),
            "description": self.description,
            "input_visit": self.input_visit,
        }


def _summary(values: pd.Series) -> dict:
    if values.empty:
        return {"n": 0}
    quantiles = values.quantile([0.0, 0.25, 0.5, 0.75, 1.0]).tolist()
    return {
        "n": int(values.size),
        "mean": float(values.mean()),
        "sd": float(values.std(ddof=1)) if values.size > 1 else 0.0,
        "min": quantiles[0],
        "q25": quantiles[1],
        "median": quantiles[2],
        "q75": quantiles[3],
        "max": quantiles[4],
    }


def _reasons(ptids, reason: str) -> pd.Series:
    return pd.Series(reason, index=pd.Index(list(ptids), name="PTID"), dtype=object)


# ----------------------------------------------------------------------------- rules
def _baseline_diagnosis(cohort: Cohort) -> tuple[pd.Series, pd.Series]:
    dx = cohort.baseline["DX"]
    missing = dx.isna()
    labels = dx[~missing].map(DX_NAMES).astype(object)
    return labels, _reasons(dx.index[missing], "no DX at baseline")


def _two_groups(first: str, second: str) -> Rule:
    def rule(cohort: Cohort) -> tuple[pd.Series, pd.Series]:
        labels, excluded = _baseline_diagnosis(cohort)
        wanted = labels.isin([first, second])
        other = labels[~wanted]
        reasons = "baseline DX is " + other + f" (the task keeps {first} and {second})"
        return labels[wanted], pd.concat([excluded, reasons.astype(object)])

    return rule


def _mci_conversion(cohort: Cohort) -> tuple[pd.Series, pd.Series]:
    labels, excluded = _baseline_diagnosis(cohort)
    other = labels[labels != "MCI"]
    excluded = pd.concat([excluded, ("baseline DX is " + other + ", not MCI").astype(object)])
    mci = labels.index[labels == "MCI"]
    table = cohort.table
    visits = table[table["PTID"].isin(mci) & table["DX"].notna() & table["MONTH"].notna()]
    month = visits["MONTH"].astype("int64")
    converted = set(visits.loc[(visits["DX"] == "Dementia") & (month <= CONVERSION_MONTHS), "PTID"])
    followed = set(visits.loc[month >= CONVERSION_MONTHS, "PTID"])
    kept, short = {}, []
    for ptid in mci:
        if ptid in converted:
            kept[ptid] = "pMCI"
        elif ptid in followed:
            kept[ptid] = "sMCI"
        else:
            short.append(ptid)
    reason = f"MCI with < {CONVERSION_MONTHS} months follow-up and no conversion"
    kept_series = pd.Series(kept, dtype=object)
    kept_series.index.name = "PTID"
    return kept_series, pd.concat([excluded, _reasons(short, reason)])


def _stage4(cohort: Cohort) -> tuple[pd.Series, pd.Series]:
    # DX_bl is constant per subject (checked by the reader) but may be blank on some visits.
    known = cohort.table.dropna(subset=["DX_bl"]).drop_duplicates("PTID")
    labels = known.set_index("PTID")["DX_bl"].map(STAGE4_FROM_DX_BL).astype(object)
    missing = [ptid for ptid in cohort.subjects if ptid not in labels.index]
    return labels, _reasons(missing, "no DX_bl")


def _cdrsb_change(cohort: Cohort) -> tuple[pd.Series, pd.Series]:
    baseline = cohort.baseline
    table = cohort.table
    if "CDRSB" not in table:
        return pd.Series(dtype="float64"), _reasons(baseline.index, "no CDR-SB column")
    later = table[table["MONTH"] == PROGRESSION_MONTH]
    # Several visits may fall on month 24 (odd VISCODEs with a Month); prefer one with a score.
    later = later.assign(_blank=later["CDRSB"].isna()).sort_values(["PTID", "_blank", "VISCODE"])
    at_month = later.drop_duplicates("PTID").set_index("PTID")["CDRSB"]
    kept, reasons = {}, {}
    for ptid, row in baseline.iterrows():
        if pd.isna(row["MONTH"]) or row["MONTH"] != 0:
            reasons[ptid] = "no month-0 visit"
        elif pd.isna(row["CDRSB"]):
            reasons[ptid] = "no CDR-SB at baseline"
        elif ptid not in at_month.index:
            reasons[ptid] = f"no visit at month {PROGRESSION_MONTH}"
        elif pd.isna(at_month[ptid]):
            reasons[ptid] = f"no CDR-SB at month {PROGRESSION_MONTH}"
        else:
            kept[ptid] = float(at_month[ptid]) - float(row["CDRSB"])
    kept_series = pd.Series(kept, dtype="float64")
    kept_series.index.name = "PTID"
    excluded = pd.Series(reasons, dtype=object)
    excluded.index.name = "PTID"
    return kept_series, excluded


# ----------------------------------------------------------------------------- registry
_TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            "diagnosis",
            "classification",
            ("CN", "MCI", "AD"),
            "Every subject with a DX at the baseline visit: CN, MCI or AD (ADNIMERGE's Dementia).",
            _baseline_diagnosis,
        ),
        Task(
            "cn_vs_ad",
            "classification",
            ("CN", "AD"),
            "Subjects whose baseline DX is CN or AD (Dementia); MCI and subjects without a "
            "baseline DX are left out.",
            _two_groups("CN", "AD"),
        ),
        Task(
            "cn_vs_mci",
            "classification",
            ("CN", "MCI"),
            "Subjects whose baseline DX is CN or MCI; AD and subjects without a baseline DX are "
            "left out.",
            _two_groups("CN", "MCI"),
        ),
        Task(
            "smci_vs_pmci",
            "classification",
            ("sMCI", "pMCI"),
            f"Subjects with MCI at baseline: pMCI with Dementia at a visit by month "
            f"{CONVERSION_MONTHS}, sMCI without it and with a DX at month {CONVERSION_MONTHS} or "
            "later; MCI followed less long without converting cannot be told apart and is left out.",
            _mci_conversion,
        ),
        Task(
            "stage4",
            "classification",
            ("CN", "SMC", "MCI", "AD"),
            "Every subject with a DX_bl: CN, SMC, MCI (EMCI or LMCI) or AD, as in R-GenIMA.",
            _stage4,
        ),
        Task(
            "progression",
            "regression",
            (),
            f"Subjects with a CDR-SB at baseline (month 0) and at month {PROGRESSION_MONTH}; the "
            f"target is the change (month {PROGRESSION_MONTH} minus baseline).",
            _cdrsb_change,
        ),
    )
}


def available() -> list[str]:
    """Names of every task, in a stable order."""
    return list(_TASKS)


def get(name: str | Task) -> Task:
    """The task called ``name`` (a Task is returned as it is); unknown names raise ConfigError."""
    if isinstance(name, Task):
        return name
    if name not in _TASKS:
        raise did_you_mean("task", str(name), available())
    return _TASKS[name]
