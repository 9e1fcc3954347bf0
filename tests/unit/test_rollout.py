"""R-GenIMA interpretation: rollout on a hand-computed case, the ROI x gene matrix, bootstrap
stability, Fisher enrichment and the planted-truth recall (adfuse.explain.rollout)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adfuse.explain import rollout as ro


def test_rollout_and_roi_gene_matrix_by_hand():
    # token 0 = region 0, token 1 = region 1, token 2 = a token of gene 0
    first = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    second = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    # two heads per layer whose mean is the matrix above
    layers = [torch.stack([m + d, m - d])[None] for m, d in ((first, 0.0), (second, 0.0))]
    layers[0][0, 0, 2] += torch.tensor([0.1, -0.1, 0.0])
    layers[0][0, 1, 2] -= torch.tensor([0.1, -0.1, 0.0])
    rolled = ro.attention_rollout(layers)[0]
    # by hand: A1' = 0.5 A1 + 0.5 I = [[1,0,0],[.25,.75,0],[.1,.15,.75]]; A2' = [[.5,.5,0],[0,1,0],[0,0,1]]
    expected = torch.tensor([[0.625, 0.375, 0.0], [0.25, 0.75, 0.0], [0.1, 0.15, 0.75]])
    torch.testing.assert_close(rolled, expected)
    region = torch.tensor([[0, 1, -1]])
    gene = torch.tensor([[-1, -1, 0]])
    matrix = ro.roi_gene_matrix(rolled[None], region, gene, n_regions=2, n_genes=2)
    torch.testing.assert_close(matrix[0, :, 0], torch.tensor([0.1, 0.15]))
    assert torch.isnan(matrix[0, :, 1]).all()  # gene 1 has no token


def test_roi_gene_matrix_averages_the_tokens_of_a_gene():
    rolled = torch.eye(4)[None].clone()
    rolled[0, 2] = torch.tensor([0.2, 0.0, 0.8, 0.0])
    rolled[0, 3] = torch.tensor([0.4, 0.0, 0.0, 0.6])
    matrix = ro.roi_gene_matrix(
        rolled, torch.tensor([[0, 1, -1, -1]]), torch.tensor([[-1, -1, 0, 0]]), 2, 1
    )
    torch.testing.assert_close(matrix[0, :, 0], torch.tensor([0.3, 0.0]))


def test_bootstrap_stability_is_mean_over_interval_width():
    rng = np.random.default_rng(0)
    steady = 1.0 + 0.01 * rng.standard_normal(200)
    noisy = 1.0 + 1.0 * rng.standard_normal(200)
    values = np.stack([steady, noisy], axis=1)
    mean, low, high, stability = ro.bootstrap_stability(values, n_boot=1000, seed=0, workers=2)
    np.testing.assert_allclose(mean, values.mean(axis=0))
    np.testing.assert_allclose(stability, mean / (high - low))
    assert low[0] < mean[0] < high[0]
    # the interval of a mean of 200 values: about 4 standard errors wide
    assert (high - low)[1] == pytest.approx(3.92 * values[:, 1].std() / np.sqrt(200), rel=0.2)
    assert stability[0] > 50 * stability[1]
    again = ro.bootstrap_stability(values, n_boot=1000, seed=0, workers=1)
    np.testing.assert_array_equal(again[3], stability)  # same seed, same draws, any thread count


def test_fisher_enrichment_by_hand():
    universe = {f"G{i}" for i in range(6)}
    result = ro.enrichment({"G0", "G1", "G2"}, {"G0", "G1", "G2", "OTHER"}, universe)
    assert result["table"] == [[3, 0], [0, 3]]
    assert result["p_value"] == pytest.approx(1 / 20)  # one table of C(6, 3) = 20 is as extreme
    assert "APOE" in ro.gwas_genes() and "GAPDH" not in ro.gwas_genes()


TRUTH = {
    "genetics": {"causal_snps": [{"gene": "APOE"}, {"gene": "BIN1"}, {"gene": "APOE"}]},
    "regions": {
        "atrophy_stages": [
            {"regions": ["lh-hippocampus", "rh-hippocampus"]},
            {"regions": ["lh-precuneus"]},
        ]
    },
}


def test_planted_truth_recall_against_a_random_ranking():
    genes = ["APOE", "BIN1", "GAPDH", "ACTB", "TBP"]
    regions = ["lh-hippocampus", "lh-cuneus", "rh-hippocampus", "lh-precuneus", "lh-insula"]
    rankings = {
        "attention": {
            "genes": ["APOE", "GAPDH", "BIN1"],
            "regions": [
                "lh-hippocampus",
                "rh-hippocampus",
                "lh-cuneus",
                "lh-insula",
                "lh-precuneus",
            ],
        },
        "association": {"genes": ["GAPDH", "ACTB", "APOE"]},
    }
    result = ro.planted_truth(
        TRUTH, rankings, genes=genes, regions=regions, in_text=["APOE", "GAPDH", "BIN1"]
    )
    assert result["causal_genes"] == ["APOE", "BIN1"]
    assert result["genes"]["attention"]["recall@2"] == {"model": 0.5, "random": 2 / 5}
    assert result["genes"]["association"]["recall@2"]["model"] == 0.0
    assert set(result["regions_earliest"]) == {"attention"}  # association ranks genes only
    assert result["regions_earliest"]["attention"]["recall@2"] == {"model": 1.0, "random": 2 / 5}
    assert result["regions_affected"]["attention"]["recall@3"]["model"] == pytest.approx(2 / 3)
    assert result["regions_affected"]["attention"]["recall@5"]["model"] == 1.0
    assert result["genes_chosen_for_text"]["recall"] == 1.0
    assert ro.recall_at_k(["a", "b", "c"], {"c"}, 2) == 0.0


def test_token_sums_add_the_tokens_of_each_gene_or_region():
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    index = torch.tensor([[0, -1, 0, 1]])
    torch.testing.assert_close(ro.token_sums(values, index, 3), torch.tensor([[4.0, 4.0, 0.0]]))
