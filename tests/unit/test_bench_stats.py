"""Benchmark statistics on cases checkable by hand: t-intervals, Holm, the paired bootstrap, the
oracle posterior, and the claims' verdict rules."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from adfuse.bench import claims, oracle, tables
from adfuse.metrics import metric_function
from adfuse.models import make_config


def test_mean_and_t_interval_across_seeds():
    mean, low, high = tables.mean_ci([0.6, 0.7, 0.8])
    # sd 0.1, t(0.975, 2) = 4.302653: half-width 4.302653 * 0.1 / sqrt(3) = 0.248414
    assert mean == pytest.approx(0.7)
    assert (low, high) == pytest.approx((0.451586, 0.948414), abs=1e-6)
    single = tables.mean_ci([0.5, math.nan])
    assert single[0] == 0.5 and math.isnan(single[1]) and math.isnan(single[2])


def test_holm_adjusts_in_rank_order_and_keeps_nan_out_of_the_family():
    adjusted = tables.holm([0.01, 0.04, 0.03, math.nan])
    # sorted 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> running max 0.06
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(adjusted[3])
    assert tables.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_paired_bootstrap_of_identical_and_of_opposite_models():
    fn = metric_function("classification", ["a", "b"])
    y = np.array([0, 1] * 10)
    right = np.eye(2)[y] * 0.8 + 0.1
    wrong = np.eye(2)[1 - y] * 0.8 + 0.1
    same = tables.paired_bootstrap_seeds([(y, right, right)] * 2, fn, "balanced_accuracy", 200)
    assert same["difference"] == 0 and same["p_value"] == 1.0
    apart = tables.paired_bootstrap_seeds([(y, right, wrong)] * 2, fn, "balanced_accuracy", 200)
    assert apart["difference"] == 1.0 and (apart["low"], apart["high"]) == (1.0, 1.0)
    assert apart["p_value"] == pytest.approx(2 / 201)
    assert apart["n"] == 40


def test_the_fast_balanced_accuracy_equals_the_metrics_module():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 40)
    y[y == 2] = 1  # class 2 absent from y_true: left out of the mean, as in sklearn
    proba = rng.dirichlet(np.ones(3), size=40)
    weights = rng.integers(0, 3, size=(5, 40)).astype(float)
    full = metric_function("classification", ["a", "b", "c"])
    assert tables.balanced_accuracy(y, proba)["balanced_accuracy"] == pytest.approx(
        full(y, proba)["balanced_accuracy"]
    )
    assert tables.balanced_accuracy(y, proba, weights=weights)["balanced_accuracy"] == (
        pytest.approx(full(y, proba, weights=weights)["balanced_accuracy"])
    )


TRUTH = {
    "config": {"dx_noise_sd": 0.5},
    "severity": {"thresholds": {"CN|SMC": -1.0, "SMC|EMCI": 0.0, "EMCI|LMCI": 0.5, "LMCI|AD": 1.0}},
    "subjects": [
        {"PTID": "far_cn", "severity_bl": -10.0},
        {"PTID": "at_ad", "severity_bl": 1.0},
        {"PTID": "mci", "severity_bl": 0.5},
    ],
    "visits": [
        {"PTID": "mci", "Month": 0, "severity": 0.5},
        {"PTID": "mci", "Month": 24, "severity": 1.0},
        {"PTID": "mci", "Month": 48, "severity": 9.0},  # after the horizon: ignored
    ],
}


def test_oracle_posterior_from_the_latent_severity():
    p = oracle.posterior(TRUTH, "diagnosis", ["far_cn", "at_ad"])
    assert p[0] == pytest.approx([1, 0, 0], abs=1e-9)
    # at the LMCI|AD threshold: AD with probability 1/2, MCI for eta in [-2 sd, 0)
    assert p[1] == pytest.approx([norm.cdf(-2), 0.5 - norm.cdf(-2), 0.5])
    binary = oracle.posterior(TRUTH, "cn_vs_ad", ["at_ad"])[0]
    assert binary == pytest.approx(np.array([norm.cdf(-2), 0.5]) / (norm.cdf(-2) + 0.5))
    stage4 = oracle.posterior(TRUTH, "stage4", ["at_ad"])[0]
    assert stage4[1] == pytest.approx(norm.cdf(-2) - norm.cdf(-4))  # SMC: eta in [-1, -0.5)


def test_oracle_conversion_within_the_horizon():
    # baseline MCI: eta in [-0.5, 0.5) (sd units -1, 1); converts when 1.0 + eta >= 1.0
    p = oracle.posterior(TRUTH, "smci_vs_pmci", ["mci"])[0]
    expected = (norm.cdf(1) - norm.cdf(0)) / (norm.cdf(1) - norm.cdf(-1))
    assert p == pytest.approx([1 - expected, expected])


def test_oracle_balanced_accuracy_uses_the_prior_corrected_rule():
    ids = ["far_cn", "at_ad"]
    scores = oracle.oracle_scores(
        TRUTH, "cn_vs_ad", ids, np.array([0, 1]), ["CN", "AD"], [0.5, 0.5]
    )
    assert scores["balanced_accuracy"] == 1.0 and scores["auc"] == 1.0
    skewed = oracle.oracle_scores(
        TRUTH, "cn_vs_ad", ids, np.array([0, 1]), ["CN", "AD"], [0.01, 0.99]
    )
    # a rare CN prior makes CN the decision for the ambiguous subject (P(CN) = 0.08 vs 0.01)
    assert skewed["balanced_accuracy"] == 0.5
    assert skewed["accuracy"] == 1.0  # the posterior's argmax is untouched by the prior


# ----------------------------------------------------------------------------- verdicts
def _test(difference, low, high, p_holm, n_seeds=5, sign=1):
    return {
        "difference": difference,
        "low": low,
        "high": high,
        "p_holm": p_holm,
        "n_seeds": n_seeds,
        "sign": sign,
    }


@pytest.mark.parametrize(
    ("tests", "verdict"),
    [
        ([_test(0.05, 0.02, 0.08, 0.01)], "holds"),
        ([_test(-0.05, -0.08, -0.02, 0.01)], "does not hold"),
        ([_test(0.05, 0.02, 0.08, 0.01, sign=-1)], "does not hold"),  # lower is better
        ([_test(0.003, -0.01, 0.015, 0.6)], "does not hold"),  # inside the margin
        ([_test(0.03, -0.05, 0.1, 0.3)], "inconclusive"),
        ([_test(0.05, 0.02, 0.08, 0.01, n_seeds=1)], "inconclusive"),
        ([_test(0.05, 0.02, 0.08, 0.01), _test(0.03, -0.05, 0.1, 0.3)], "inconclusive"),
        ([_test(0.05, 0.02, 0.08, 0.01), _test(-0.05, -0.08, -0.02, 0.01)], "does not hold"),
    ],
)
def test_score_verdict_rules(tests, verdict):
    outcome = claims.Outcome("", "inconclusive", "", [], tests)
    claims._score_verdict(outcome)
    assert outcome.verdict == verdict


def fake_record(model, label, seed, correct, task="diagnosis", efficiency=None, **switches):
    """A finished run whose test predictions are right for a share ``correct`` of 30 subjects."""
    classes = ["CN", "MCI", "AD"]
    rng = np.random.default_rng(seed)
    target = np.arange(30) % 3
    right = rng.random(30) < correct
    guess = np.where(right, target, (target + 1) % 3)
    frame = pd.DataFrame({"id": [f"S{i:02d}" for i in range(30)], "target": target})
    for k, name in enumerate(classes):
        frame[f"prob_{name}"] = np.where(guess == k, 0.8, 0.1)
    config = make_config(model, "cpu", **switches).model_dump(mode="json")
    return tables.RunRecord(
        label=label,
        name=f"{label}-{task}-f1-s{seed}",
        folder=None,
        model=model,
        task=task,
        seed=seed,
        fraction=1.0,
        preset="cpu",
        modalities=["clinical"],
        model_config=config,
        metrics={},
        efficiency=efficiency or {},
        classes=classes,
        kind="classification",
        predictions=frame.set_index("id", drop=False),
    )


def _claim_row(table, claim_id):
    return table.set_index("id").loc[claim_id]


def test_claims_hold_fail_or_stay_inconclusive_from_the_runs():
    available = ["smmt", "3mt", "acmca"]
    better = [fake_record("smmt", "smmt", s, 0.95) for s in range(3)]
    worse = [fake_record("3mt", "3mt", s, 0.4) for s in range(3)]
    table = claims.evaluate_claims(better + worse, available, n_boot=200)
    row = _claim_row(table, "smmt-vs-3mt")
    assert row["verdict"] == "holds", row["reason"]
    assert row["runs"].split() == sorted(r.name for r in better + worse)
    swapped = [fake_record("smmt", "smmt", s, 0.4) for s in range(3)] + [
        fake_record("3mt", "3mt", s, 0.95) for s in range(3)
    ]
    assert _claim_row(claims.evaluate_claims(swapped, available, 200), "smmt-vs-3mt")[
        "verdict"
    ] == ("does not hold")
    one_seed = better[:1] + worse[:1]
    row = _claim_row(claims.evaluate_claims(one_seed, available, 200), "smmt-vs-3mt")
    assert row["verdict"] == "inconclusive" and "1 seed" in row["reason"]
    # no ablation runs of ACMCA; PerM-MoE not registered in this call
    assert "no runs of acmca" in _claim_row(table, "acmca-fusion")["reason"]
    assert _claim_row(table, "permoe-combinations")["reason"] == (
        "model not available (flexmoe, permoe)"
    )
    assert set(table["verdict"]) <= set(claims.VERDICTS)
    assert len(table) == len(claims.CLAIMS)


def test_a_run_matches_a_variant_by_its_config_not_its_label():
    dense = fake_record("smmt", "whatever-name", 0, 0.5, attention="dense")
    assert claims.matches(dense, claims.Variant("smmt", {"attention": "dense"}), "cpu")
    assert not claims.matches(dense, claims.Variant("smmt"), "cpu")  # default is cluster
    masked_off = fake_record("smmt", "x", 0, 0.5, attention="dense", masking=False)
    assert not claims.matches(masked_off, claims.Variant("smmt", {"attention": "dense"}), "cpu")


def test_sparse_attention_cost_claim():
    def runs(attention, seconds):
        return [
            fake_record(
                "smmt",
                f"smmt-{attention}",
                s,
                0.6,
                efficiency={"train_seconds": seconds + s, "energy": {"kwh": (seconds + s) / 1e5}},
                attention=attention,
            )
            for s in range(3)
        ]

    table = claims.evaluate_claims(runs("cluster", 60) + runs("dense", 100), ["smmt"], 100)
    row = _claim_row(table, "smmt-sparse-cost")
    assert row["verdict"] == "holds"
    assert row["adfuse_figure"].startswith("train time -39.")  # (60+s - 100-s)/(100+s)
    slower = claims.evaluate_claims(runs("cluster", 100) + runs("dense", 60), ["smmt"], 100)
    assert _claim_row(slower, "smmt-sparse-cost")["verdict"] == "does not hold"


def _combination_runs(tmp_path, better_in: int, seeds=(0, 1, 2)):
    """PerM-MoE and Flex-MoE runs whose cached per-combination predictions make PerM-MoE better
    in the first ``better_in`` of the 15 image combinations (and worse in the others)."""
    from adfuse.combinations import image_combinations

    combos = ["+".join(c) for c in image_combinations(claims.IMAGES)]
    runs = []
    for model in ("permoe", "flexmoe"):
        for seed in seeds:
            record = fake_record(model, model, seed, 0.5, task="progression")
            record.kind, record.classes = "regression", []
            rows = []
            for index, combination in enumerate(combos):
                good = (index < better_in) == (model == "permoe")
                for subject in range(10):
                    target = float(subject % 3)
                    error = 0.2 if good else 0.6
                    rows.append((model, seed, combination, f"S{subject}", target, target + error))
            frame = pd.DataFrame(
                rows, columns=["model", "seed", "combination", "id", "target", "prediction"]
            )
            frame.to_csv(tmp_path / f"combinations-{record.name}.csv", index=False)
            runs.append(record)
    return runs, combos


def test_permoe_claims_count_combinations_and_single_images(tmp_path):
    runs, combos = _combination_runs(tmp_path, better_in=13)
    assert combos[-3:] == ["flair", "amyloid", "tau"]  # singles last: amyloid and tau are worse
    table = claims.evaluate_claims(runs, ["permoe", "flexmoe"], 100, "unused", None, tmp_path)
    row = _claim_row(table, "permoe-combinations")
    assert row["verdict"] == "holds" and "13 of 15" in row["adfuse_figure"]
    single = _claim_row(table, "permoe-single")
    # flair better (-66.7 %), amyloid and tau worse (+200 %): the mean change is positive
    assert single["verdict"] == "does not hold"
    assert "flair -66.7 %" in single["adfuse_figure"]
    runs, _ = _combination_runs(tmp_path, better_in=6)
    table = claims.evaluate_claims(runs, ["permoe", "flexmoe"], 100, "unused", None, tmp_path)
    assert _claim_row(table, "permoe-combinations")["verdict"] == "does not hold"
    runs, _ = _combination_runs(tmp_path, better_in=9)  # a majority, sign test p = 0.30
    table = claims.evaluate_claims(runs, ["permoe", "flexmoe"], 100, "unused", None, tmp_path)
    assert _claim_row(table, "permoe-combinations")["verdict"] == "inconclusive"


def _explained_runs(folder, truth: dict) -> list:
    """Two seeds of an rgenima run whose explain folder holds ``truth`` as planted_truth.json."""
    import json

    made = []
    for seed in (0, 1):
        record = fake_record("rgenima", "rgenima", seed, 0.5, task="stage4")
        record.folder = folder / str(seed)
        (record.folder / "explain").mkdir(parents=True)
        (record.folder / "explain" / "planted_truth.json").write_text(json.dumps(truth))
        made.append(record)
    return made


def test_planted_truth_claim_against_a_random_ranking(tmp_path):
    def runs(hits: int):
        # as explain writes it: one table per ranking; the claim is about attention's
        table = {"n_truth": 10, "n_candidates": 40, "recall@10": {
            "model": hits / 10, "random": 10 / 40}}  # fmt: skip
        other = table | {"recall@10": {"model": 1.0, "random": 10 / 40}}
        truth = {"genes": {"attention": table, "attribution": other, "association": other}}
        return _explained_runs(tmp_path / str(hits), truth)

    strong = _claim_row(claims.evaluate_claims(runs(7), ["rgenima"], 100), "rgenima-planted-truth")
    assert (
        strong["verdict"] == "holds" and "recall@10: 0.70 (random 0.25)" in strong["adfuse_figure"]
    )
    weak = _claim_row(claims.evaluate_claims(runs(2), ["rgenima"], 100), "rgenima-planted-truth")
    assert weak["verdict"] == "does not hold"


def test_planted_regions_claim_is_decided_by_attention_with_attribution_beside_it(tmp_path):
    def rows(auroc):  # as explain writes it: per ranking, one row per atrophy stage
        return [{"stage": 1, "n_truth": 10, "n_candidates": 80, "auroc": {
            "model": auroc, "random": 0.5}}]  # fmt: skip

    def runs(attention_auroc: float):
        truth = {
            "regions_by_stage": {"attention": rows(attention_auroc), "attribution": rows(0.95)}
        }
        return _explained_runs(tmp_path / str(attention_auroc), truth)

    strong = _claim_row(
        claims.evaluate_claims(runs(0.9), ["rgenima"], 100), "rgenima-planted-regions"
    )
    assert strong["verdict"] == "holds"
    assert "attention AUROC 0.90" in strong["adfuse_figure"]
    assert "attribution AUROC 0.95" in strong["adfuse_figure"]
    weak = _claim_row(
        claims.evaluate_claims(runs(0.45), ["rgenima"], 100), "rgenima-planted-regions"
    )
    assert weak["verdict"] == "does not hold"
    # a slight edge over 0.5 with 10 of 80 regions is not significant
    edge = _claim_row(
        claims.evaluate_claims(runs(0.55), ["rgenima"], 100), "rgenima-planted-regions"
    )
    assert edge["verdict"] == "inconclusive"
