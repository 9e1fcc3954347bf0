"""Cluster attention (SMMT §III.B): K-Means on the queries, attention only within a cluster's block,
dense SDPA below the crossover, and padding that can neither be attended nor change anything."""

from __future__ import annotations

import math

import pytest
import torch

from adfuse.models.layers import cluster_attention as ca
from adfuse.models.layers.cluster_attention import (
    CROSSOVER,
    ClusterAttention,
    ClusterAttentionBlock,
    block_layout,
    cluster_count,
    kmeans_clusters,
)
from adfuse.models.layers.cross_attention import CrossAttention


def pair(dim=16, heads=4, **options) -> tuple[ClusterAttention, ClusterAttention]:
    """A clustered layer and a dense one with the same weights."""
    torch.manual_seed(0)
    clustered = ClusterAttention(dim, heads, mode="cluster", **options).eval()
    dense = ClusterAttention(dim, heads, mode="dense").eval()
    dense.load_state_dict(clustered.state_dict())
    return clustered, dense


def self_attention_reference(layer: ClusterAttention, x, mask=None) -> torch.Tensor:
    """Dense self-attention by the shared CrossAttention (same parameter names)."""
    reference = CrossAttention(x.shape[-1], layer.heads).eval()
    reference.load_state_dict(layer.state_dict())
    return reference(x, x, mask)


def blockwise_reference(layer: ClusterAttention, x, blocks) -> torch.Tensor:
    """Attention computed block by block with plain softmax (a token sees its block only)."""
    q, k, v = layer.query(x), layer.key(x), layer.value(x)
    batch, n, dim = x.shape
    head_dim = dim // layer.heads
    mixed = torch.zeros(batch, n, dim)
    for b in range(batch):
        for block in blocks[b].unique():
            if block < 0:
                continue
            index = (blocks[b] == block).nonzero().squeeze(1)
            qh, kh, vh = (t[b, index].view(len(index), layer.heads, head_dim) for t in (q, k, v))
            scores = torch.einsum("qhd,khd->hqk", qh, kh) / math.sqrt(head_dim)
            out = torch.einsum("hqk,khd->qhd", scores.softmax(-1), vh)
            mixed[b, index] = out.reshape(len(index), dim)
    return layer.out(mixed)


# ----------------------------------------------------------------------------- K-Means
def test_cluster_count_is_ceil_log2_n():
    n = torch.tensor([1, 2, 3, 5, 16, 17, 1024, 1025])
    assert cluster_count(n).tolist() == [1, 1, 2, 3, 4, 5, 10, 11]
    assert cluster_count(torch.tensor([3, 40]), n_clusters=8).tolist() == [3, 8]


def test_kmeans_starts_at_evenly_spaced_tokens_and_lloyd_lowers_the_inertia():
    torch.manual_seed(1)
    points = torch.randn(3, 40, 8)
    start, k = kmeans_clusters(points, iterations=0)
    assert k.tolist() == [6, 6, 6]
    for j in range(6):  # the seed token of cluster j is its own nearest centroid
        assert (start[:, j * 40 // 6] == j).all()

    def inertia(ids):
        total = 0.0
        for b in range(3):
            for c in ids[b].unique():
                members = points[b, ids[b] == c]
                total += ((members - members.mean(0)) ** 2).sum().item()
        return total

    ids, _ = kmeans_clusters(points, iterations=5)
    assert inertia(ids) < inertia(start)
    again, _ = kmeans_clusters(points, iterations=5)
    assert torch.equal(ids, again)  # deterministic


def test_kmeans_ignores_padding_and_has_no_gradient():
    torch.manual_seed(2)
    points = torch.randn(2, 20, 8, requires_grad=True)
    real = torch.ones(2, 20, dtype=torch.bool)
    real[0, 13:] = False
    ids, k = kmeans_clusters(points, real)
    assert not ids.requires_grad and ids.dtype == torch.long
    assert (ids[0, 13:] == -1).all() and (ids[0, :13] >= 0).all()
    assert k.tolist() == [4, 5]  # ⌈log2 13⌉, ⌈log2 20⌉
    noisy = points.detach().clone()
    noisy[0, 13:] = 1000 * torch.randn(7, 8)
    assert torch.equal(kmeans_clusters(noisy, real)[0], ids)
    alone, _ = kmeans_clusters(points[:1, :13])  # the same sample without its padding
    assert torch.equal(alone[0], ids[0, :13])


def test_blocks_lie_inside_one_cluster_and_hold_at_most_the_capacity():
    # 15 real tokens, k = 3 -> capacity 5; cluster 0 (11 tokens) is over it
    ids = torch.tensor([[0, 0, 0, 1, 0, 0, 0, 0, 2, 0, 0, 1, 0, -1, 0, 2]])
    layout = block_layout(ids, torch.tensor([3]))
    assert layout.width == 5
    blocks = layout.block_of_token[0]
    assert blocks[13] == -1
    for block in blocks[blocks >= 0].unique():
        members = ids[0, blocks == block]
        assert len(members.unique()) == 1 and len(members) <= 5
    in_zero = blocks[ids[0] == 0]
    sizes = sorted((in_zero == b).sum().item() for b in in_zero.unique())
    assert sizes == [3, 4, 4]  # near-equal parts, not 5 + 5 + 1
    order = in_zero.tolist()  # parts follow token order
    assert order == sorted(order)
    assert layout.blocks * layout.width < 2 * 16  # padded blocks, no n x n matrix


# ----------------------------------------------------------------------------- attention
@pytest.mark.parametrize("masked", [False, True])
def test_one_cluster_equals_dense_attention(masked):
    clustered, dense = pair(n_clusters=1)
    x = torch.randn(3, 24, 16)
    mask = torch.rand(3, 24) > 0.3 if masked else None
    real = torch.ones(3, 24, dtype=torch.bool) if mask is None else mask
    out = clustered(x, mask)
    assert clustered.last_path == "cluster"
    torch.testing.assert_close(out[real], dense(x, mask)[real], rtol=1e-5, atol=1e-5)
    expected = self_attention_reference(clustered, x, mask)
    torch.testing.assert_close(out[real], expected[real], rtol=1e-5, atol=1e-5)


def test_well_separated_clusters_are_found_and_no_weight_crosses_them():
    torch.manual_seed(3)
    layer = ClusterAttention(8, heads=2, mode="cluster", keep_weights=True).eval()
    with torch.no_grad():  # identity projections: the queries are the tokens
        for linear in (layer.query, layer.key, layer.value, layer.out):
            linear.weight.copy_(torch.eye(8))
            linear.bias.zero_()
    planted = torch.arange(16) // 4  # n = 16 -> k = 4 clusters, four groups of four tokens
    x = 20 * torch.eye(8)[planted] + 0.1 * torch.randn(2, 16, 8)
    layer(x)
    for b in range(2):
        assert torch.equal(layer.last_clusters[b], planted)
    weights = layer.last_weights  # [B, heads, n, n]
    across = planted[:, None] != planted[None, :]
    assert (weights[:, :, across] == 0).all()
    assert (weights[:, :, ~across] > 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 16))


def test_no_weight_crosses_clusters_on_random_tokens_and_heads_share_them(monkeypatch):
    calls = []
    original = ca.kmeans_clusters
    monkeypatch.setattr(ca, "kmeans_clusters", lambda *a, **k: calls.append(1) or original(*a, **k))
    torch.manual_seed(4)
    layer = ClusterAttention(16, heads=4, mode="cluster", keep_weights=True).eval()
    x = torch.randn(2, 40, 16)
    out = layer(x)
    assert len(calls) == 1  # one clustering per call, for all four heads
    clusters, weights = layer.last_clusters, layer.last_weights
    assert len(clusters[0].unique()) > 1
    across = clusters[:, :, None] != clusters[:, None, :]
    assert (weights.permute(0, 2, 3, 1)[across] == 0).all()
    pattern = weights > 0
    assert (pattern == pattern[:, :1]).all()  # every head attends within the same blocks
    # the weights kept for inspection are those of the computation: same output without them
    layer.keep_weights = False
    torch.testing.assert_close(layer(x), out)


def test_gradients_reach_the_projections_through_the_clustered_path():
    layer = ClusterAttention(16, heads=4, mode="cluster")
    x = torch.randn(2, 30, 16, requires_grad=True)
    layer(x).square().sum().backward()
    assert layer.last_path == "cluster"
    for name, parameter in layer.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_dense_below_the_crossover_clustered_from_it():
    assert ClusterAttention(16).crossover == CROSSOVER
    layer = ClusterAttention(16, heads=4, crossover=32)
    layer(torch.randn(1, 31, 16))
    assert layer.last_path == "dense" and layer.last_clusters is None
    layer(torch.randn(1, 32, 16))
    assert layer.last_path == "cluster" and layer.last_clusters is not None
    never = ClusterAttention(16, heads=4, mode="dense", crossover=0)
    never(torch.randn(1, 64, 16))
    assert never.last_path == "dense"


def test_both_paths_are_correct_above_the_crossover():
    n = CROSSOVER + 40
    clustered, dense = pair(dim=8, heads=2)
    auto = ClusterAttention(8, heads=2).eval()
    auto.load_state_dict(clustered.state_dict())
    x = torch.randn(2, n, 8)
    mask = torch.ones(2, n, dtype=torch.bool)
    mask[1, -100:] = False
    with torch.no_grad():
        out = auto(x, mask)
        assert auto.last_path == "cluster"
        torch.testing.assert_close(out, clustered(x, mask))
        expected = blockwise_reference(clustered, x, clustered.last_blocks)
        torch.testing.assert_close(out[mask], expected[mask], rtol=1e-4, atol=1e-5)
        # the blocks are the clusters, cut where a cluster exceeds the capacity ⌈n / k⌉
        blocks, clusters = clustered.last_blocks, clustered.last_clusters
        for b in range(2):
            for block in blocks[b][blocks[b] >= 0].unique():
                assert len(clusters[b][blocks[b] == block].unique()) == 1
        reference = self_attention_reference(dense, x, mask)
        torch.testing.assert_close(dense(x, mask)[mask], reference[mask], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["cluster", "dense"])
def test_padding_is_never_attended_and_changes_nothing(mode):
    torch.manual_seed(5)
    layer = ClusterAttention(16, heads=4, mode=mode, keep_weights=True).eval()
    x = torch.randn(2, 30, 16)
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[0, 20:] = False
    out = layer(x, mask)
    noisy = x.clone()
    noisy[0, 20:] = 100 * torch.randn(10, 16)
    torch.testing.assert_close(layer(noisy, mask)[mask], out[mask], rtol=0, atol=1e-6)
    if mode == "cluster":
        assert (layer.last_weights[0, :, :, 20:] == 0).all()
        alone = layer(x[:1, :20])  # the same sample, unpadded: same clusters, same outputs
        torch.testing.assert_close(alone[0], out[0, :20], rtol=1e-5, atol=1e-6)
    empty = layer(x, torch.zeros(2, 30, dtype=torch.bool))
    assert torch.isfinite(empty).all()


def test_block_trains_end_to_end():
    block = ClusterAttentionBlock(16, heads=4, mode="cluster")
    x = torch.randn(2, 20, 16, requires_grad=True)
    out = block(x)
    out.sum().backward()
    assert out.shape == x.shape
    assert all(p.grad is not None for p in block.parameters())
