"""Subject-level, stratified, leak-free splits; a split is written once (``split.json``) and checked.

Every function splits subject ids (PTID), never visits, so all the visits of a subject fall on one
side by construction. Randomness comes only from ``numpy.random.default_rng(seed)`` applied to
sorted ids and sorted strata: the same seed gives the same split on any machine, whatever
PYTHONHASHSEED. Strata are the classes of a classification task and quantile bins of the target
of a regression task. ``check_disjoint`` turns a leak (a subject on two sides, or a statistic
fitted on subjects outside train) into a ``DataLeakageError``, as ClinicaDL does.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from adfuse import tasks
from adfuse.errors import ConfigError, DataError, DataLeakageError
from adfuse.io import atomic_write_json

if TYPE_CHECKING:
    from adfuse.data.cohort import Cohort

SPLIT_FILE = "split.json"
PARTS = ("train", "val", "test")
KINDS = ("holdout", "kfold")
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)
DEFAULT_TRAINING_FRACTIONS = (0.2, 0.4, 0.6, 0.8, 1.0)
REGRESSION_BINS = 5
FRACTION_TOLERANCE = 1e-6
SHOWN_IDS = 5  # ids named in an error message
REQUIRED_KEYS = ("train", "val", "test", "task", "seed", "kind", "fold", "fractions")
OPTIONAL_KEYS = ("n_folds", "train_fraction", "balance")


@dataclass
class Split:
    """Subject ids per part (each sorted), and how they were drawn."""

    train: list[str]
    val: list[str]
    test: list[str]
    task: str
    seed: int
    kind: str = "holdout"  # holdout | kfold
    fold: int | None = None
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS  # nominal train/val/test shares
    n_folds: int | None = None
    train_fraction: float = 1.0  # share of the drawn train part kept (data-fraction curves)
    balance: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for part in PARTS:
            setattr(self, part, sorted(str(ptid) for ptid in getattr(self, part)))
        self.fractions = tuple(float(f) for f in self.fractions)

    def parts(self) -> dict[str, list[str]]:
        return {part: getattr(self, part) for part in PARTS}

    def to_dict(self) -> dict:
        return {
            "train": list(self.train),
            "val": list(self.val),
            "test": list(self.test),
            "task": self.task,
            "seed": self.seed,
            "kind": self.kind,
            "fold": self.fold,
            "fractions": list(self.fractions),
            "n_folds": self.n_folds,
            "train_fraction": self.train_fraction,
            "balance": self.balance,
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "split") -> Split:
        """A Split from ``to_dict()`` output; a missing, unknown or mistyped key is a ConfigError."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a JSON object, found {type(data).__name__}")
        unknown = sorted(set(data) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
        if unknown:
            raise ConfigError(
                f"{source}: unknown key {unknown[0]!r} (expected: "
                f"{', '.join(REQUIRED_KEYS + OPTIONAL_KEYS)})"
            )
        missing = [key for key in REQUIRED_KEYS if key not in data]
        if missing:
            raise ConfigError(f"{source}: missing key {missing[0]!r}")
        for part in PARTS:
            ids = data[part]
            if not isinstance(ids, list) or not all(isinstance(p, str) for p in ids):
                raise ConfigError(f"{source}: {part!r} must be a list of subject ids (strings)")
        if not isinstance(data["task"], str):
            raise ConfigError(f"{source}: 'task' must be a task name, found {data['task']!r}")
        _check_int(data["seed"], f"{source}: 'seed'", minimum=0)
        if data["kind"] not in KINDS:
            raise ConfigError(f"{source}: 'kind' must be one of {KINDS}, found {data['kind']!r}")
        if data["fold"] is not None:
            _check_int(data["fold"], f"{source}: 'fold'", minimum=0)
        fractions = data["fractions"]
        if not isinstance(fractions, list) or not all(_is_number(f) for f in fractions):
            raise ConfigError(f"{source}: 'fractions' must be a list of numbers")
        if data.get("n_folds") is not None:
            _check_int(data["n_folds"], f"{source}: 'n_folds'", minimum=2)
        train_fraction = data.get("train_fraction", 1.0)
        if not _is_number(train_fraction) or not 0 < train_fraction <= 1:
            raise ConfigError(f"{source}: 'train_fraction' must be in (0, 1]")
        if not isinstance(data.get("balance", {}), Mapping):
            raise ConfigError(f"{source}: 'balance' must be an object")
        split = cls(
            train=data["train"],
            val=data["val"],
            test=data["test"],
            task=data["task"],
            seed=int(data["seed"]),
            kind=data["kind"],
            fold=data["fold"],
            fractions=tuple(fractions),
            n_folds=data.get("n_folds"),
            train_fraction=float(train_fraction),
            balance=dict(data.get("balance", {})),
        )
        check_disjoint(split)
        return split

    def save(self, path: str | Path) -> Path:
        """Write ``split.json`` into the folder ``path`` (or to ``path`` if it ends in .json).

        A split is written once: an existing file holding the same split is left as it is, one
        holding a different split is a ConfigError. A leaky split is refused.
        """
        target = _split_file(path)
        check_disjoint(self)
        if target.exists():
            existing = Split.load(target)
            different = _first_difference(existing, self)
            if different is not None:
                raise ConfigError(
                    f"{target}: already holds a different split ({different} differs); a split "
                    "is written once: use a new run folder or remove the file"
                )
            return target
        atomic_write_json(target, _json_safe(self.to_dict()))
        return target

    @classmethod
    def load(cls, path: str | Path) -> Split:
        """Read a ``split.json`` (or the one in the folder ``path``) and validate it."""
        target = _split_file(path)
        if not target.is_file():
            raise ConfigError(f"{target}: no split file")
        try:
            data = json.loads(target.read_text(encoding="utf-8-sig"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{target}: not valid JSON ({exc})") from None
        return cls.from_dict(data, source=str(target))

    def subset_train(
        self,
        fraction: float,
        targets: pd.DataFrame | pd.Series,
        seed: int = 0,
        cohort: Cohort | None = None,
    ) -> Split:
        """This split with a stratified ``fraction`` of train (val and test unchanged).

        Subsets of one split for one seed are nested across calls (see ``training_fractions``).
        The balance is recomputed when ``cohort`` is given, else left empty.
        """
        fraction = float(fraction)
        train = training_fractions(self, targets, (fraction,), seed)[fraction]
        subset = dataclasses.replace(
            self, train=train, train_fraction=self.train_fraction * fraction, balance={}
        )
        if cohort is not None:
            subset.balance = _balance(cohort, tasks.get(self.task), _target_frame(targets), subset)
        return subset


# ----------------------------------------------------------------------------- drawing splits
def subject_split(
    cohort: Cohort,
    task: str | tasks.Task,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> Split:
    """A stratified train/val/test split of the task's subjects.

    Per stratum, the subjects (sorted, then shuffled by the seed) are cut into counts rounded up
    or down from their shares (see ``_allocate``), so each part holds each class within one
    subject of its share; a class with 3 or more subjects is in every part.
    """
    task = tasks.get(task)
    fractions = _check_fractions(fractions)
    seed = _check_int(seed, "seed", minimum=0)
    targets = task.targets(cohort)
    task.check_enough(targets)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[str]] = {part: [] for part in PARTS}
    groups = _strata_groups(_strata(targets["target"], task.kind))
    for ids, counts in zip(groups, _allocate([len(g) for g in groups], fractions), strict=True):
        shuffled = _shuffled(ids, rng)
        start = 0
        for part, count in zip(PARTS, counts, strict=True):
            parts[part] += shuffled[start : start + count]
            start += count
    split = Split(**parts, task=task.name, seed=seed, kind="holdout", fractions=fractions)
    split.balance = _balance(cohort, task, targets, split)
    return split


def kfold(
    cohort: Cohort,
    task: str | tasks.Task,
    k: int = 5,
    seed: int = 0,
    val_fraction: float = 0.2,
) -> list[Split]:
    """``k`` stratified folds: test is fold i, val a stratified ``val_fraction`` of the rest.

    Every subject is in exactly one test fold. Subjects are dealt round-robin over the folds,
    stratum after stratum, so fold sizes and per-class counts differ by at most one.
    """
    task = tasks.get(task)
    k = _check_int(k, "k (number of folds)", minimum=2)
    seed = _check_int(seed, "seed", minimum=0)
    if not _is_number(val_fraction) or not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    targets = task.targets(cohort)
    task.check_enough(targets)
    if len(targets) < k:
        raise DataError(f"task {task.name!r}: {len(targets)} subjects cannot fill {k} folds")
    strata = _strata(targets["target"], task.kind)
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    for ids in _strata_groups(strata):
        for ptid in _shuffled(ids, rng):
            fold_of[ptid] = len(fold_of) % k
    nominal = tuple(
        round(share, 10)
        for share in ((1 - 1 / k) * (1 - val_fraction), (1 - 1 / k) * val_fraction, 1 / k)
    )
    splits = []
    for fold in range(k):
        test = [ptid for ptid in strata.index if fold_of[ptid] == fold]
        rest = strata[[fold_of[ptid] != fold for ptid in strata.index]]
        carve = np.random.default_rng([seed, fold + 1])
        train: list[str] = []
        val: list[str] = []
        groups = _strata_groups(rest)
        counts = _allocate([len(g) for g in groups], (1 - val_fraction, val_fraction))
        for ids, (n_train, _) in zip(groups, counts, strict=True):
            shuffled = _shuffled(ids, carve)
            train += shuffled[:n_train]
            val += shuffled[n_train:]
        split = Split(
            train,
            val,
            test,
            task=task.name,
            seed=seed,
            kind="kfold",
            fold=fold,
            fractions=nominal,
            n_folds=k,
        )
        split.balance = _balance(cohort, task, targets, split)
        splits.append(split)
    return splits


def training_fractions(
    split: Split,
    task_targets: pd.DataFrame | pd.Series,
    fractions: Sequence[float] = DEFAULT_TRAINING_FRACTIONS,
    seed: int = 0,
) -> dict[float, list[str]]:
    """Nested, stratified subsets of ``split.train``, one per fraction (val and test untouched).

    One order of the train subjects is drawn: one subject of each stratum first, then the rest
    interleaved in proportion to stratum sizes. Each subset is a prefix of that order, so a
    smaller fraction's subset is inside every larger one, and every class is in every subset
    when there are at least as many subjects as classes.
    """
    if isinstance(fractions, (int, float)) or not fractions:
        raise ConfigError("fractions must be a non-empty list of numbers in (0, 1]")
    for fraction in fractions:
        if not _is_number(fraction) or not 0 < fraction <= 1:
            raise ConfigError(f"training fraction {fraction!r} is not in (0, 1]")
    seed = _check_int(seed, "seed", minimum=0)
    targets = _target_frame(task_targets)["target"]
    missing = [ptid for ptid in split.train if ptid not in targets.index]
    if missing:
        raise DataError(
            f"{len(missing)} train subjects of the split have no target "
            f"({_examples(missing)}): targets are not those of the split's task"
        )
    train_targets = targets.loc[split.train]
    kind = "classification" if pd.api.types.is_integer_dtype(train_targets) else "regression"
    strata = _strata(train_targets, kind)
    order = _interleaved_order(strata, np.random.default_rng(seed))
    n, n_strata = len(order), strata.nunique()
    out: dict[float, list[str]] = {}
    for fraction in fractions:
        size = n if fraction == 1 else min(n, max(n_strata, math.floor(fraction * n + 0.5)))
        out[float(fraction)] = sorted(order[:size])
    return out


# ----------------------------------------------------------------------------- leak check
def check_disjoint(split: Split, fitted: Mapping[str, Iterable[str]] | None = None) -> None:
    """DataLeakageError when two parts share a subject, or a fitted statistic saw non-train ids.

    ``fitted`` maps a statistic's name (e.g. "clinical scaler") to the subject ids it was fitted
    on; those must all be train subjects.
    """
    parts = {part: set(ids) for part, ids in split.parts().items()}
    problems = []
    for first, second in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = sorted(parts[first] & parts[second])
        if shared:
            problems.append(
                f"{first} and {second} share {len(shared)} subject"
                f"{'' if len(shared) == 1 else 's'}: {_examples(shared)}"
            )
    for name, ids in (fitted or {}).items():
        ids = [ids] if isinstance(ids, str) else [str(ptid) for ptid in ids]
        outside = sorted(set(ids) - parts["train"])
        if outside:
            where = [f"{ptid} ({_side(ptid, parts)})" for ptid in outside]
            problems.append(
                f"{name} was fitted on {len(outside)} subject"
                f"{'' if len(outside) == 1 else 's'} outside train: {_examples(where)}"
            )
    if problems:
        fold = f", fold {split.fold}" if split.fold is not None else ""
        raise DataLeakageError(
            f"split of task {split.task!r} (seed {split.seed}{fold}) leaks: " + "; ".join(problems)
        )


# ----------------------------------------------------------------------------- helpers
def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise ConfigError(f"fractions must be three numbers, got {fractions!r}") from None
    if len(values) != 3:
        raise ConfigError(f"fractions must be three numbers (train, val, test), got {values}")
    if not all(math.isfinite(f) and f > 0 for f in values):
        raise ConfigError(f"fractions must all be positive, got {values}")
    if abs(sum(values) - 1) > FRACTION_TOLERANCE:
        raise ConfigError(f"fractions must sum to 1, got {values} (sum {sum(values):g})")
    return values


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _target_frame(targets: pd.DataFrame | pd.Series) -> pd.DataFrame:
    if isinstance(targets, pd.Series):
        return targets.rename("target").to_frame()
    if "target" not in targets:
        raise ConfigError("targets must be Task.targets() output (a 'target' column per PTID)")
    return targets


def _strata(target: pd.Series, kind: str) -> pd.Series:
    """Stratum per subject (index PTID, sorted): the class, or a quantile bin of the target."""
    target = target.sort_index()
    if kind == "classification":
        return target.astype("int64")
    # Bins of equal size on the rank (ties broken by PTID); at least 3 subjects per bin so that
    # each bin can reach every part.
    n = len(target)
    n_bins = max(1, min(REGRESSION_BINS, n // 3))
    order = sorted(target.index, key=lambda ptid: (target[ptid], ptid))
    rank = {ptid: position for position, ptid in enumerate(order)}
    return pd.Series([rank[ptid] * n_bins // n for ptid in target.index], index=target.index)


def _strata_groups(strata: pd.Series) -> list[list[str]]:
    """The sorted ids of each stratum, strata in sorted order."""
    return [sorted(strata.index[strata == value]) for value in sorted(strata.unique())]


def _shuffled(ids: list[str], rng: np.random.Generator) -> list[str]:
    return [ids[i] for i in rng.permutation(len(ids))]


def _allocate(sizes: Sequence[int], fractions: Sequence[float]) -> list[list[int]]:
    """Counts per part for each stratum size: floor or ceiling of its share of the stratum.

    Which parts get a stratum's leftover subjects is decided by what each part is owed so far
    over all strata, so the part totals stay within one subject of their share as well. Every
    part gets at least one subject of a stratum that has as many subjects as there are parts.
    """
    total = sum(fractions)
    shares = [f / total for f in fractions]
    owed = [0.0] * len(shares)
    out = []
    for n in sizes:
        ideal = [n * share for share in shares]
        counts = [math.floor(x) for x in ideal]
        due = [owed[i] + ideal[i] - counts[i] for i in range(len(counts))]
        for i in sorted(range(len(counts)), key=lambda i: (-due[i], i))[: n - sum(counts)]:
            counts[i] += 1
        if n >= len(counts):
            while 0 in counts:
                donor = max(
                    (i for i in range(len(counts)) if counts[i] > 1),
                    key=lambda i: (counts[i] - ideal[i] - owed[i], -i),
                )
                counts[donor] -= 1
                counts[counts.index(0)] += 1
        owed = [owed[i] + ideal[i] - counts[i] for i in range(len(counts))]
        out.append(counts)
    return out


def _interleaved_order(strata: pd.Series, rng: np.random.Generator) -> list[str]:
    """Each stratum's first subject, then all others by their position within their stratum."""
    firsts: list[str] = []
    rest: list[tuple[float, int, str]] = []
    for number, ids in enumerate(_strata_groups(strata)):
        shuffled = _shuffled(ids, rng)
        firsts.append(shuffled[0])
        rest += [((j + 0.5) / len(ids), number, p) for j, p in enumerate(shuffled) if j > 0]
    return firsts + [ptid for _, _, ptid in sorted(rest)]


def _balance(cohort: Cohort, task: tasks.Task, targets: pd.DataFrame, split: Split) -> dict:
    """Per part: n, class counts (or target mean), mean age, % female; train-vs-test p-values."""
    from scipy import stats

    baseline = cohort.baseline
    out: dict[str, Any] = {}
    for part, ids in split.parts().items():
        summary: dict[str, Any] = {"n": len(ids)}
        values = targets["target"].reindex(ids)
        if task.kind == "classification":
            counts = values.value_counts()
            summary["classes"] = {
                name: int(counts.get(i, 0)) for i, name in enumerate(task.classes)
            }
        else:
            summary["target_mean"] = _float(values.mean())
        if "AGE" in baseline:
            summary["age_mean"] = _float(baseline["AGE"].reindex(ids).mean())
        if "PTGENDER" in baseline:
            sex = baseline["PTGENDER"].reindex(ids).dropna()
            summary["female_pct"] = _float(100 * (sex == "Female").mean()) if len(sex) else None
        out[part] = summary
    if "AGE" in baseline:
        train_age = baseline["AGE"].reindex(split.train).dropna()
        test_age = baseline["AGE"].reindex(split.test).dropna()
        p_value = None
        if len(train_age) >= 2 and len(test_age) >= 2:
            p_value = _float(stats.ttest_ind(train_age, test_age, equal_var=False).pvalue)
        out["age_ttest_p"] = p_value
    if "PTGENDER" in baseline:
        table = np.array(
            [
                [(baseline["PTGENDER"].reindex(ids) == sex).sum() for sex in ("Male", "Female")]
                for ids in (split.train, split.test)
            ]
        )
        p_value = None
        if (table.sum(axis=0) > 0).all() and (table.sum(axis=1) > 0).all():
            p_value = _float(stats.chi2_contingency(table).pvalue)
        out["sex_chi2_p"] = p_value
    return out


def _float(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _float(value)
    return value


def _split_file(path: str | Path) -> Path:
    path = Path(path)
    return path if path.suffix == ".json" else path / SPLIT_FILE


def _first_difference(existing: Split, new: Split) -> str | None:
    """The first key (balance aside) on which two splits differ, None when they are the same."""
    old, current = _json_safe(existing.to_dict()), _json_safe(new.to_dict())
    for key in REQUIRED_KEYS + OPTIONAL_KEYS:
        if key != "balance" and old[key] != current[key]:
            return key
    return None


def _examples(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:SHOWN_IDS])
    return shown + (f" and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else "")


def _side(ptid: str, parts: dict[str, set[str]]) -> str:
    sides = [part for part in ("val", "test") if ptid in parts[part]]
    return " and ".join(sides) if sides else "in no part of the split"
