"""R-GenIMA interpretation: rollout on a hand-computed case, the ROI x gene matrix, bootstrap
stability, Fisher enrichment, the planted-truth metrics (recall, precision, AUROC, per atrophy
stage, the headline) and the voxel-to-region sums (adfuse.explain.rollout)."""

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
    # precision@k and AUROC beside recall: hippocampi 1st and 2nd, precuneus 5th of 5
    affected = result["regions_affected"]["attention"]
    assert affected["precision@3"] == {"model": pytest.approx(2 / 3), "random": 3 / 5}
    assert affected["precision@5"]["model"] == pytest.approx(3 / 5)
    # true-false pairs ranked right: 2 hippocampi x 2 others + precuneus x 0 = 4 of 3 x 2 = 6
    assert affected["auroc"] == {"model": pytest.approx(4 / 6), "random": 0.5}
    assert result["regions_earliest"]["attention"]["auroc"]["model"] == 1.0
    # genes: APOE 1st, BIN1 3rd of the 3 ranked, ACTB and TBP unranked (tied last)
    # APOE beats GAPDH, ACTB, TBP (3); BIN1 loses to GAPDH, beats ACTB, TBP (2) -> 5 of 6
    assert result["genes"]["attention"]["auroc"]["model"] == pytest.approx(5 / 6)


def test_planted_truth_per_atrophy_stage_and_cumulative():
    regions = ["lh-hippocampus", "lh-cuneus", "rh-hippocampus", "lh-precuneus", "lh-insula"]
    ranking = ["lh-precuneus", "lh-hippocampus", "lh-cuneus", "rh-hippocampus", "lh-insula"]
    rankings = {"attribution": {"regions": ranking}, "association": {"genes": ["APOE"]}}
    result = ro.planted_truth(TRUTH, rankings, genes=["APOE"], regions=regions, in_text=["APOE"])
    first, second = result["regions_by_stage"]["attribution"]
    assert set(result["regions_by_stage"]) == {"attribution"}
    assert (first["stage"], first["n_truth"], second["n_truth"]) == (1, 2, 1)
    # stage 1 (hippocampi, 2nd and 4th): beat 2 of 3 others, then 1 of 3 -> 3 of 6
    assert first["auroc"]["model"] == pytest.approx(3 / 6)
    assert first["recall@2"] == {"model": 0.5, "random": 2 / 5}
    assert second["auroc"]["model"] == 1.0 and second["precision@1"]["model"] == 1.0
    # stages 1..2: the three affected at places 1, 2 and 4 -> 3 + 3 + 1 = 5 of 3 x 2 pairs
    assert second["cumulative"]["n_truth"] == 3
    assert second["cumulative"]["auroc"]["model"] == pytest.approx(5 / 6)
    assert first["cumulative"] == {
        k: v for k, v in first.items() if k not in ("stage", "onset", "cumulative")
    }


def test_ranking_auroc_and_precision_by_hand():
    assert ro.ranking_auroc(["a", "b", "c", "d"], {"a", "c"}) == 0.75  # a>b, a>d, c>d; b>c
    assert ro.ranking_auroc(["a", "b", "c", "d"], {"d"}) == 0.0
    assert ro.ranking_auroc(["a", "b"], {"a", "b"}) != ro.ranking_auroc(["a", "b"], {"a", "b"})
    # c is unranked: it ties with d below a and b -> 0.5 of 3 pairs
    assert ro.ranking_auroc(["a", "b"], {"c"}, ["a", "b", "c", "d"]) == pytest.approx(0.5 / 3)
    assert ro.precision_at_k(["a", "b", "c"], {"a", "c"}, 2) == 0.5
    assert ro.precision_at_k(["a"], {"a"}, 5) == 1.0  # of the ranked ones


def test_headline_gives_every_region_ranking_and_the_gene_recalls():
    regions = ["lh-hippocampus", "lh-cuneus", "rh-hippocampus", "lh-precuneus", "lh-insula"]
    rankings = {
        "attention": {"genes": ["GAPDH", "APOE"], "regions": regions[::-1]},
        "attribution": {"genes": ["APOE", "GAPDH"], "regions": regions},
    }
    genes = ["APOE", "BIN1", "GAPDH"]
    result = ro.planted_truth(TRUTH, rankings, genes=genes, regions=regions, in_text=genes)
    text = ro.headline(result)
    lines = text.splitlines()
    assert len(lines) == 3  # attention's regions, attribution's regions, the genes
    # attribution: hippocampi 1st and 3rd beat 5 of 3 x 2 pairs; with the precuneus (4th) 4 of 6
    assert "'attribution'" in lines[1] and "AUROC 0.67 (random 0.50)" in lines[1]
    assert "stages 1..i: 0.83, 0.67" in lines[1] and "recall@5 1.00 (random 1.00)" in lines[1]
    assert "'attention'" in lines[0] and "AUROC 0.33 (random 0.50)" in lines[0]
    assert "attention recall@2 0.50 (random 0.67)" in lines[2]
    assert "attribution recall@2 0.50 (random 0.67)" in lines[2]


def test_token_sums_add_the_tokens_of_each_gene_or_region():
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    index = torch.tensor([[0, -1, 0, 1]])
    torch.testing.assert_close(ro.token_sums(values, index, 3), torch.tensor([[4.0, 4.0, 0.0]]))


def test_region_label_crops_follow_the_roi_crops_and_their_neighbours():
    # a 4 x 4 x 2 atlas (z repeats): region 5 at x 0-1 (but x 1, y 0-1), region 9 at x 1-3,
    # y 0-1 (but x 3, y 1, background)
    labels = np.zeros((4, 4, 2), dtype=np.int16)
    labels[:2] = 5
    labels[1:, :2] = 9
    labels[3, 1] = 0
    owner = ro.region_label_crops(labels, [5, 9], roi_size=2)
    assert owner.shape == (2, 2, 2, 2)
    assert (owner[:, :, :, 0] == owner[:, :, :, 1]).all()
    # region 5's box (x 0-1, y 0-3) resized along y: its crop holds region 9 at x 1, y 0-1
    assert owner[0, :, :, 0].tolist() == [[0, 0], [1, 0]]
    # region 9's box (x 1-3, y 0-1) resized along x: the voxel sampled mostly at x 3, y 1 (a
    # quarter region 9, three quarters background) is no region's
    assert owner[1, :, :, 0].tolist() == [[1, 1], [1, -1]]


def test_region_sums_by_hand_with_voxels_of_no_region():
    voxels = torch.arange(16.0).reshape(1, 2, 2, 2, 2)  # two crops of 2^3 voxels
    owner = torch.full((2, 2, 2, 2), -1)
    owner[0, 0] = 0  # crop 0: its first x-slice (voxels 0-3) is region 0's
    owner[1, 0, 0] = 0  # crop 1: voxels 8, 9 are region 0's too (an overlapping box)
    owner[1, 1] = 1  # voxels 12-15 are region 1's; 10, 11 and 4-7 belong to no region
    sums = ro.region_sums(torch.cat([voxels, 2 * voxels]), owner, 2)
    torch.testing.assert_close(sums, torch.tensor([[23.0, 54.0], [46.0, 108.0]]))
