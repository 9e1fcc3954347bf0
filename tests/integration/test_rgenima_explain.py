"""R-GenIMA end to end on the synthetic cohort: train (two stages, SNP QC on the training split)
then explain (rollout, stability, enrichment, planted truth), as ``adfuse train`` / ``adfuse explain``."""

from __future__ import annotations

import csv
import json

import pytest

from adfuse.explain import explain_run
from adfuse.train import TrainConfig, fit

SMALL = {"dim": 32, "roi_size": 8, "max_text_tokens": 64, "lm_layers": 1, "hidden": 32}


@pytest.fixture(scope="module")
def run(synth_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("rgenima") / "run"
    config = TrainConfig(
        model="rgenima", task="stage4", epochs=2, n_boot=20, patterns=False, overrides=SMALL
    )
    return fit(synth_small, config, out, cache_dir=out.parent / "cache", progress=False)


def test_training_runs_both_stages_and_records_the_snp_qc(run):
    with open(run / "history.csv") as handle:
        stages = [row["stage"] for row in csv.DictReader(handle)]
    assert stages == ["image", "image", "fusion", "fusion"]
    fitted = json.loads((run / "model_fitted.json").read_text())
    qc = fitted["snp_qc"]
    assert qc["pass"] + qc["fail_maf"] + qc["fail_hwe"] - qc["fail_both"] == qc["snps"]
    assert qc["fail_maf"] > 0  # the generator plants rare SNPs (MAF below 0.05)
    train = json.loads((run / "split.json").read_text())["train"]
    assert 0 < qc["fitted_on_subjects"] <= len(train)
    assert fitted["text_tokens"] <= fitted["text_budget"] == SMALL["max_text_tokens"]


@pytest.fixture(scope="module")
def explained(run):
    return explain_run(run, n_boot=100)


def test_explain_writes_rollout_stability_enrichment_and_planted_truth(explained):
    folder = explained
    summary = json.loads((folder / "summary.json").read_text())
    for name in summary["files"]:
        assert (folder / name).stat().st_size > 0
    assert {"roi_gene_heatmap.png", "region_attention_all.png", "pairs.csv"} <= set(
        summary["files"]
    )
    assert set(summary["per_group"]) == {"all", "CN", "SMC", "MCI", "AD"}
    with open(folder / "pairs.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row["group"] == "all"]
    n_genes = len(summary["genes_in_text"])
    assert len(rows) == 83 * n_genes  # every atlas region x every gene in the text
    stability = [float(row["stability"]) for row in rows]
    assert stability == sorted(stability, reverse=True)
    assert 0 <= summary["enrichment"]["p_value"] <= 1
    truth = summary["planted_truth"]
    assert truth["causal_genes"] and truth["regions_affected"]["attention"]["n_truth"] > 0
    # the genes in the text (chosen on the training split) hold more causal genes than chance
    chosen = truth["genes_chosen_for_text"]
    assert chosen["recall"] > chosen["random"]
    # every ranking is scored against the truth, beside a random ranking
    assert set(truth["genes"]) == {"attention", "attribution", "association"}
    assert set(truth["regions_earliest"]) == {"attention", "attribution"}
    for table in truth["regions_affected"].values():
        assert table["n_truth"] == 48 and table["recall@10"]["random"] == 10 / 83
        assert table["precision@10"]["random"] == 48 / 83 and table["auroc"]["random"] == 0.5
        assert 0 <= table["auroc"]["model"] <= 1
    # per atrophy stage of truth.json (4 of them), alone and with the earlier ones
    stages = truth["regions_by_stage"]["attribution"]
    assert [row["stage"] for row in stages] == [1, 2, 3, 4]
    assert sum(row["n_truth"] for row in stages) == stages[-1]["cumulative"]["n_truth"] == 48
    with open(folder / "genes.csv") as handle:
        header = next(csv.reader(handle))
    assert header == ["rank", "gene", "attention", "attribution", "association"]


def test_the_explain_command_prints_the_planted_truth_headline(run, explained, monkeypatch):
    from typer.testing import CliRunner

    from adfuse.cli import app

    monkeypatch.setattr("adfuse.explain.explain_run", lambda *args, **options: explained)
    result = CliRunner().invoke(app, ["explain", str(run)])
    assert result.exit_code == 0, result.output
    assert "planted truth, atrophy regions (48 of 83), 'attention'" in result.output
    assert "planted truth, atrophy regions (48 of 83), 'attribution'" in result.output
    assert "planted truth, causal genes" in result.output
