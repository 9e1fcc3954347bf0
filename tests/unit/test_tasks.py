"""Tasks on the hand-made cohort of cohort_factory, where every answer is known."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from adfuse import tasks
from adfuse.errors import ConfigError, DataError
from tests.unit.cohort_factory import hand_made_cohort, sized_cohort

CN = ["002_S_0001", "002_S_0002", "002_S_0003", "002_S_0004", "002_S_0005", "002_S_0031"]
MCI = [f"003_S_00{n}" for n in range(10, 19)]
AD = ["004_S_0020", "004_S_0021", "004_S_0022"]
NO_BASELINE_DX = "005_S_0030"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return hand_made_cohort(tmp_path_factory.mktemp("hand_made"))


def labels(task_name: str, cohort) -> dict[str, str]:
    return tasks.get(task_name).targets(cohort)["label"].to_dict()


def reasons(task_name: str, cohort) -> dict[str, str]:
    frame = tasks.get(task_name).exclusions(cohort)
    return dict(zip(frame["PTID"], frame["reason"], strict=True))


def test_available_names_every_task():
    assert available_set() == {
        "diagnosis",
        "cn_vs_ad",
        "cn_vs_mci",
        "smci_vs_pmci",
        "stage4",
        "progression",
    }
    for name in tasks.available():
        task = tasks.get(name)
        assert task.name == name and task.input_visit == "bl"
        assert task.description.endswith(".")
        assert (task.kind == "regression") == (task.classes == ())


def available_set() -> set[str]:
    return set(tasks.available())


def test_a_misspelt_task_suggests_the_right_one():
    with pytest.raises(ConfigError, match="Did you mean 'diagnosis'") as error:
        tasks.get("diagnosys")
    assert "smci_vs_pmci" in str(error.value)  # the full list of choices


def test_tasks_are_frozen_plain_data():
    task = tasks.get("diagnosis")
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.name = "other"
    assert task.to_dict()["classes"] == ["CN", "MCI", "AD"]


def test_diagnosis_uses_the_baseline_dx_and_calls_dementia_ad(cohort):
    found = labels("diagnosis", cohort)
    assert found == {
        **dict.fromkeys(CN, "CN"),
        **dict.fromkeys(MCI, "MCI"),
        **dict.fromkeys(AD, "AD"),
    }
    assert reasons("diagnosis", cohort) == {NO_BASELINE_DX: "no DX at baseline"}


def test_targets_frame_is_indexed_by_sorted_ptid_with_class_indices(cohort):
    targets = tasks.get("diagnosis").targets(cohort)
    assert list(targets.columns) == ["target", "label", "viscode"]
    assert targets.index.name == "PTID"
    assert list(targets.index) == sorted(targets.index)
    assert pd.api.types.is_integer_dtype(targets["target"])
    assert targets.loc["004_S_0020", "target"] == 2  # AD is the third class
    assert targets.loc["002_S_0001", "target"] == 0
    # the input visit is the subject's baseline visit: m06 for the subject without a bl row
    assert targets.loc["002_S_0031", "viscode"] == "m06"
    assert targets.loc["003_S_0010", "viscode"] == "bl"


def test_cn_vs_ad_and_cn_vs_mci_leave_the_third_group_out(cohort):
    assert labels("cn_vs_ad", cohort) == {**dict.fromkeys(CN, "CN"), **dict.fromkeys(AD, "AD")}
    excluded = reasons("cn_vs_ad", cohort)
    assert set(excluded) == {*MCI, NO_BASELINE_DX}
    assert excluded["003_S_0010"].startswith("baseline DX is MCI")
    assert labels("cn_vs_mci", cohort) == {**dict.fromkeys(CN, "CN"), **dict.fromkeys(MCI, "MCI")}
    assert set(reasons("cn_vs_mci", cohort)) == {*AD, NO_BASELINE_DX}


def test_smci_vs_pmci_follows_the_36_month_rule(cohort):
    found = labels("smci_vs_pmci", cohort)
    assert found == {
        "003_S_0010": "pMCI",  # Dementia at m24
        "003_S_0011": "pMCI",  # Dementia exactly at m36 counts
        "003_S_0018": "pMCI",  # Dementia at m06, however short the follow-up
        "003_S_0012": "sMCI",  # MCI through m36
        "003_S_0013": "sMCI",  # no m36 visit, but a DX at m48
        "003_S_0015": "sMCI",  # converts at m48, after the horizon
        "003_S_0017": "sMCI",  # reverts to CN
    }
    excluded = reasons("smci_vs_pmci", cohort)
    short = "MCI with < 36 months follow-up and no conversion"
    assert excluded["003_S_0014"] == short  # followed to m24 only
    assert excluded["003_S_0016"] == short  # its m36 visit has no DX
    assert excluded[NO_BASELINE_DX] == "no DX at baseline"
    assert excluded["002_S_0001"] == "baseline DX is CN, not MCI"
    assert excluded["004_S_0020"] == "baseline DX is AD, not MCI"
    targets = tasks.get("smci_vs_pmci").targets(cohort)
    assert targets.loc["003_S_0011", "target"] == 1 and targets.loc["003_S_0012", "target"] == 0


def test_stage4_maps_dx_bl_as_r_genima(cohort):
    found = labels("stage4", cohort)
    assert found["002_S_0001"] == "CN"
    assert found["002_S_0002"] == "SMC" and found["002_S_0004"] == "SMC"
    assert found["003_S_0011"] == "MCI"  # EMCI
    assert found["003_S_0010"] == "MCI"  # LMCI
    assert found["004_S_0021"] == "AD"
    assert found[NO_BASELINE_DX] == "MCI"  # DX_bl is known even where the visit's DX is blank
    assert tasks.get("stage4").classes == ("CN", "SMC", "MCI", "AD")
    assert reasons("stage4", cohort) == {}


def test_progression_is_the_24_month_change_in_cdr_sb(cohort):
    targets = tasks.get("progression").targets(cohort)
    expected = {
        "002_S_0001": 0.5,
        "002_S_0002": 0.0,
        "003_S_0010": 2.5,
        "003_S_0012": 0.5,
        "003_S_0013": 0.5,
        "003_S_0014": 0.5,
        "003_S_0015": 0.5,
        "003_S_0016": 0.0,
        "004_S_0020": 2.5,
        "004_S_0022": 3.5,
    }
    assert targets["target"].to_dict() == pytest.approx(expected)
    assert pd.api.types.is_float_dtype(targets["target"])
    assert targets.loc["004_S_0022", "label"] == "3.5"
    excluded = reasons("progression", cohort)
    assert excluded["002_S_0003"] == "no visit at month 24"
    assert excluded["002_S_0004"] == "no CDR-SB at month 24"
    assert excluded["002_S_0005"] == "no CDR-SB at baseline"
    assert excluded["002_S_0031"] == "no month-0 visit"
    assert len(excluded) == 9


@pytest.mark.parametrize("name", tasks.available())
def test_kept_and_excluded_partition_the_cohort(cohort, name):
    task = tasks.get(name)
    kept = set(task.targets(cohort).index)
    excluded = task.exclusions(cohort)
    assert list(excluded.columns) == ["PTID", "reason"]
    assert not kept & set(excluded["PTID"])
    assert kept | set(excluded["PTID"]) == set(cohort.subjects)
    assert excluded["reason"].str.len().gt(0).all()


def test_describe_counts_classes_and_reasons(cohort):
    summary = tasks.get("smci_vs_pmci").describe(cohort)
    assert summary["classes"] == {"sMCI": 4, "pMCI": 3}
    assert summary["n_kept"] == 7 and summary["n_subjects"] == 19
    assert summary["excluded"] == {
        "baseline DX is CN, not MCI": 6,
        "baseline DX is AD, not MCI": 3,
        "MCI with < 36 months follow-up and no conversion": 2,
        "no DX at baseline": 1,
    }


def test_describe_summarises_a_regression_target(cohort):
    summary = tasks.get("progression").describe(cohort)["target"]
    assert summary["n"] == 10
    assert summary["mean"] == pytest.approx(1.1)
    assert summary["median"] == pytest.approx(0.5)
    assert summary["max"] == pytest.approx(3.5)


def test_too_few_subjects_in_a_class_is_a_data_error(tmp_path):
    small = sized_cohort(tmp_path, {"CN": 5, "MCI": 4, "AD": 1})
    task = tasks.get("cn_vs_ad")
    with pytest.raises(DataError, match=r"'cn_vs_ad'.*'AD' has 1 subject\b"):
        task.check_enough(task.targets(small))
    tasks.get("cn_vs_mci").check_enough(tasks.get("cn_vs_mci").targets(small))


def test_too_few_regression_targets_is_a_data_error(cohort):
    task = tasks.get("progression")
    targets = task.targets(cohort)
    task.check_enough(targets)  # exactly 10
    with pytest.raises(DataError, match=r"'progression': 9 subjects"):
        task.check_enough(targets.iloc[:9])
