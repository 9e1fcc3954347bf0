"""Splits: subject-level, stratified, deterministic, written once, and leaks refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adfuse import splits, tasks
from adfuse.errors import ConfigError, DataError, DataLeakageError
from tests.unit.cohort_factory import sized_cohort

COUNTS = {"CN": 30, "MCI": 20, "AD": 10}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return sized_cohort(tmp_path_factory.mktemp("sized"), COUNTS)


@pytest.fixture(scope="module")
def targets(cohort):
    return tasks.get("diagnosis").targets(cohort)


def class_counts(ids, targets) -> dict[str, int]:
    return targets.loc[list(ids), "label"].value_counts().to_dict()


def assert_disjoint_complete_stratified(split, targets, fractions):
    parts = split.parts()
    for name, ids in parts.items():
        assert ids == sorted(ids), f"{name} is not sorted"
        assert len(set(ids)) == len(ids)
    assert not set(split.train) & set(split.val)
    assert not set(split.train) & set(split.test)
    assert not set(split.val) & set(split.test)
    assert set(split.train) | set(split.val) | set(split.test) == set(targets.index)
    per_class = targets["label"].value_counts()
    for (name, ids), share in zip(parts.items(), fractions, strict=True):
        found = class_counts(ids, targets)
        for label, n in per_class.items():
            assert abs(found.get(label, 0) - n * share) <= 1, (name, label, found, n * share)
            if n >= 3:
                assert found.get(label, 0) >= 1, f"{label} missing from {name}"


# ----------------------------------------------------------------------------- subject_split
def test_split_is_disjoint_complete_and_stratified(cohort, targets):
    split = splits.subject_split(cohort, "diagnosis", seed=0)
    assert (len(split.train), len(split.val), len(split.test)) == (36, 12, 12)
    assert split.kind == "holdout" and split.fold is None and split.task == "diagnosis"
    assert_disjoint_complete_stratified(split, targets, (0.6, 0.2, 0.2))


def test_split_keeps_only_the_task_subjects(cohort):
    split = splits.subject_split(cohort, tasks.get("cn_vs_ad"), seed=3)
    every = set(split.train) | set(split.val) | set(split.test)
    assert every == set(tasks.get("cn_vs_ad").targets(cohort).index)
    assert len(every) == COUNTS["CN"] + COUNTS["AD"]


def test_same_seed_same_split_and_other_seed_other_split(cohort):
    first = splits.subject_split(cohort, "diagnosis", seed=7)
    again = splits.subject_split(cohort, "diagnosis", seed=7)
    other = splits.subject_split(cohort, "diagnosis", seed=8)
    assert first.to_dict() == again.to_dict()
    assert first.test != other.test


def test_split_does_not_depend_on_the_hash_seed(cohort):
    script = (
        "import sys, json, adfuse; "
        "c = adfuse.load_cohort(sys.argv[1]); "
        "s = adfuse.splits.subject_split(c, 'diagnosis', seed=5); "
        "print(json.dumps([s.train, s.val, s.test]))"
    )
    hash_seed = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    done = subprocess.run(
        [sys.executable, "-c", script, str(cohort.root)],
        env={**os.environ, "PYTHONHASHSEED": hash_seed},
        capture_output=True,
        text=True,
        check=True,
    )
    here = splits.subject_split(cohort, "diagnosis", seed=5)
    assert json.loads(done.stdout) == [here.train, here.val, here.test]


def test_fractions_need_only_sum_to_one_within_tolerance(cohort, targets):
    split = splits.subject_split(cohort, "diagnosis", seed=1, fractions=(0.7, 0.2, 0.1))
    assert (len(split.train), len(split.val), len(split.test)) == (42, 12, 6)
    assert_disjoint_complete_stratified(split, targets, (0.7, 0.2, 0.1))


def test_part_sizes_stay_within_one_of_their_share_over_many_strata(cohort):
    # 60 subjects in 5 target bins of 12: 8.4 / 2.4 / 1.2 per bin; rounding each bin alone
    # would drift by up to one subject per bin.
    split = splits.subject_split(cohort, "progression", seed=0, fractions=(0.7, 0.2, 0.1))
    assert (len(split.train), len(split.val), len(split.test)) == (42, 12, 6)


@pytest.mark.parametrize(
    "fractions", [(0.5, 0.2, 0.2), (0.8, 0.2, 0.0), (1.1, -0.05, -0.05), (0.5, 0.5), "abc"]
)
def test_bad_fractions_are_refused(cohort, fractions):
    with pytest.raises(ConfigError, match="fractions"):
        splits.subject_split(cohort, "diagnosis", fractions=fractions)


def test_a_class_of_three_reaches_every_part(tmp_path):
    small = sized_cohort(tmp_path, {"CN": 3, "MCI": 3, "AD": 3})
    split = splits.subject_split(small, "diagnosis", seed=0)
    targets = tasks.get("diagnosis").targets(small)
    for ids in split.parts().values():
        assert class_counts(ids, targets) == {"CN": 1, "MCI": 1, "AD": 1}


def test_a_class_too_small_to_split_is_a_data_error(tmp_path):
    small = sized_cohort(tmp_path, {"CN": 6, "MCI": 6, "AD": 1})
    with pytest.raises(DataError, match=r"'cn_vs_ad'.*'AD' has 1 subject"):
        splits.subject_split(small, "cn_vs_ad")
    with pytest.raises(DataError, match="'AD' has 1 subject"):
        splits.kfold(small, "diagnosis", k=3)


def test_unknown_task_suggests_a_name(cohort):
    with pytest.raises(ConfigError, match="Did you mean 'cn_vs_ad'"):
        splits.subject_split(cohort, "cn_vs_adx")


def test_regression_is_stratified_by_target_bins(cohort):
    task = tasks.get("progression")
    targets = task.targets(cohort)["target"]
    split = splits.subject_split(cohort, task, seed=0)
    assert set(split.train) | set(split.val) | set(split.test) == set(targets.index)
    ranked = targets.sort_values(kind="stable")
    low, high = set(ranked.index[:12]), set(ranked.index[-12:])  # bottom and top fifths
    for ids in split.parts().values():
        assert set(ids) & low and set(ids) & high
    assert "target_mean" in split.balance["test"] and "classes" not in split.balance["test"]


def test_balance_reports_counts_age_sex_and_p_values(cohort):
    split = splits.subject_split(cohort, "diagnosis", seed=0)
    baseline = cohort.baseline
    test = split.balance["test"]
    assert test["n"] == len(split.test)
    assert test["classes"] == {"CN": 6, "MCI": 4, "AD": 2}
    assert test["age_mean"] == pytest.approx(baseline.loc[split.test, "AGE"].mean())
    female = (baseline.loc[split.test, "PTGENDER"] == "Female").mean() * 100
    assert test["female_pct"] == pytest.approx(female)
    assert 0 <= split.balance["age_ttest_p"] <= 1
    assert 0 <= split.balance["sex_chi2_p"] <= 1


# ----------------------------------------------------------------------------- kfold
def test_kfold_puts_each_subject_in_exactly_one_test_fold(cohort, targets):
    folds = splits.kfold(cohort, "diagnosis", k=5, seed=2)
    assert [f.fold for f in folds] == list(range(5))
    tested = [ptid for fold in folds for ptid in fold.test]
    assert sorted(tested) == sorted(targets.index)
    for fold in folds:
        assert fold.kind == "kfold" and fold.n_folds == 5
        splits.check_disjoint(fold)
        assert set(fold.train) | set(fold.val) | set(fold.test) == set(targets.index)
        assert class_counts(fold.test, targets) == {"CN": 6, "MCI": 4, "AD": 2}
        rest = class_counts(fold.train + fold.val, targets)
        val = class_counts(fold.val, targets)
        for label, n in rest.items():
            assert abs(val[label] - 0.2 * n) <= 1


def test_kfold_is_deterministic_and_validates_k(cohort):
    first = splits.kfold(cohort, "diagnosis", k=3, seed=4)
    again = splits.kfold(cohort, "diagnosis", k=3, seed=4)
    assert [f.to_dict() for f in first] == [f.to_dict() for f in again]
    with pytest.raises(ConfigError, match="k"):
        splits.kfold(cohort, "diagnosis", k=1)
    with pytest.raises(ConfigError, match="val_fraction"):
        splits.kfold(cohort, "diagnosis", val_fraction=1.0)


# ----------------------------------------------------------------------------- data fractions
def test_training_fractions_are_nested_and_stratified(cohort, targets):
    split = splits.subject_split(cohort, "diagnosis", seed=0)
    subsets = splits.training_fractions(split, targets, seed=3)
    assert list(subsets) == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert subsets[1.0] == split.train
    train_counts = class_counts(split.train, targets)
    previous: set[str] = set()
    for fraction, ids in subsets.items():
        assert previous <= set(ids), f"{fraction} does not contain the smaller subset"
        assert len(ids) == round(fraction * len(split.train))
        found = class_counts(ids, targets)
        for label, n in train_counts.items():
            assert found.get(label, 0) >= 1
            assert abs(found.get(label, 0) - n * len(ids) / len(split.train)) <= 1
        previous = set(ids)


def test_a_tiny_fraction_still_has_every_class(cohort, targets):
    split = splits.subject_split(cohort, "diagnosis", seed=0)
    tiny = splits.training_fractions(split, targets, fractions=(0.01,))[0.01]
    assert set(class_counts(tiny, targets)) == {"CN", "MCI", "AD"}


def test_subset_train_leaves_val_and_test_alone(cohort, targets):
    split = splits.subject_split(cohort, "diagnosis", seed=0)
    half = split.subset_train(0.5, targets, seed=1, cohort=cohort)
    assert half.val == split.val and half.test == split.test
    assert set(half.train) < set(split.train) and len(half.train) == 18
    assert half.train_fraction == 0.5
    assert half.balance["train"]["n"] == 18
    quarter = split.subset_train(0.25, targets, seed=1)
    assert set(quarter.train) < set(half.train)  # nested across calls
    with pytest.raises(ConfigError):
        splits.training_fractions(split, targets, fractions=(0.0, 0.5))


# ----------------------------------------------------------------------------- split.json
def test_save_and_load_round_trip(cohort, tmp_path):
    split = splits.subject_split(cohort, "diagnosis", seed=0)
    path = split.save(tmp_path / "run")
    assert path == tmp_path / "run" / "split.json"
    loaded = splits.Split.load(tmp_path / "run")
    assert loaded == split
    assert loaded.balance == split.balance
    assert loaded.to_dict() == split.to_dict()
    folds = splits.kfold(cohort, "diagnosis", k=3)
    folds[1].save(tmp_path / "fold1.json")
    assert splits.Split.load(tmp_path / "fold1.json").to_dict() == folds[1].to_dict()


def test_save_writes_once_and_refuses_a_different_split(cohort, tmp_path):
    split = splits.subject_split(cohort, "diagnosis", seed=0)
    path = split.save(tmp_path)
    before = path.read_bytes()
    split.save(tmp_path)  # the same split: fine
    other = splits.subject_split(cohort, "diagnosis", seed=1)
    with pytest.raises(ConfigError, match="different split"):
        other.save(tmp_path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["split.json"]  # no temporary left


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("test"), "missing key 'test'"),
        (lambda d: d.update(testing=[]), "unknown key 'testing'"),
        (lambda d: d.update(kind="bootstrap"), "'kind'"),
        (lambda d: d.update(train="011_S_0001"), "'train'"),
        (lambda d: d.update(seed=-1), "'seed'"),
    ],
)
def test_load_refuses_a_bad_split_file(cohort, tmp_path, change, message):
    data = splits.subject_split(cohort, "diagnosis", seed=0).to_dict()
    change(data)
    (tmp_path / "split.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=message):
        splits.Split.load(tmp_path)


def test_load_refuses_a_leaky_split_file(cohort, tmp_path):
    data = splits.subject_split(cohort, "diagnosis", seed=0).to_dict()
    data["val"].append(data["train"][0])
    (tmp_path / "split.json").write_text(json.dumps(data))
    with pytest.raises(DataLeakageError, match=data["train"][0]):
        splits.Split.load(tmp_path)


# ----------------------------------------------------------------------------- leak check
def test_check_disjoint_passes_a_correct_split(cohort):
    split = splits.subject_split(cohort, "diagnosis", seed=0)
    assert splits.check_disjoint(split) is None
    assert splits.check_disjoint(split, {"clinical scaler": split.train[:5]}) is None


def test_check_disjoint_names_the_shared_subjects():
    split = splits.Split(
        train=["A1", "A2", "A3"], val=["B1"], test=["A2", "A3", "C1"], task="diagnosis", seed=0
    )
    with pytest.raises(DataLeakageError, match="train and test share 2 subjects: A2, A3"):
        splits.check_disjoint(split)


def test_check_disjoint_names_at_most_five_ids():
    shared = [f"S{i}" for i in range(8)]
    split = splits.Split(train=shared, val=shared, test=["T"], task="diagnosis", seed=0)
    with pytest.raises(DataLeakageError, match="S0, S1, S2, S3, S4 and 3 more") as error:
        splits.check_disjoint(split)
    assert "S7" not in str(error.value)


def test_check_disjoint_catches_a_scaler_fitted_on_val(cohort):
    split = splits.subject_split(cohort, "diagnosis", seed=0)
    leaked = split.val[0]
    fitted = {"clinical scaler": [*split.train, leaked]}
    with pytest.raises(DataLeakageError, match="clinical scaler") as error:
        splits.check_disjoint(split, fitted)
    assert f"{leaked} (val)" in str(error.value)
    assert split.train[0] not in str(error.value)


# ----------------------------------------------------------------------------- property
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.tuples(st.integers(3, 15), st.integers(3, 15), st.integers(3, 15)),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_split_is_disjoint_complete_and_stratified(sizes, seed):
    with tempfile.TemporaryDirectory() as folder:
        cohort = sized_cohort(Path(folder), dict(zip(("CN", "MCI", "AD"), sizes, strict=True)))
        targets = tasks.get("diagnosis").targets(cohort)
        split = splits.subject_split(cohort, "diagnosis", seed=seed)
    assert_disjoint_complete_stratified(split, targets, (0.6, 0.2, 0.2))
