"""Cluster-based sparse self-attention (SMMT §III.B): attention only among tokens of one cluster.

``ClusterAttention(dim, heads)(x, key_mask=None)`` is multi-head self-attention over ``x [B, n, D]``
in which a token attends only to tokens of its own K-Means cluster:

1. **Clusters** (``kmeans_clusters``): K-Means on the query vectors (all heads together, detached:
   no gradient through the assignment), ``k = ⌈log2 n⌉`` clusters per sample (n = its real tokens),
   initialised at evenly spaced real tokens, a few Lloyd iterations (fewer once the assignment
   stops changing), batched over samples. One
   clustering per call, **reused by every head** (the paper amortises its cost that way).
2. **Blocks** (``block_layout``): tokens sorted by cluster; a cluster larger than the capacity
   ``w = ⌈n / k⌉`` is cut, in token order, into near-equal parts of at most ``w`` tokens (its tokens
   then attend within their part only). Every block is padded to ``w`` slots.
3. **Attention** within each block: one SDPA call over ``[B · blocks, heads, w, w]``, so the cost is
   about ``n · w = n² / k`` instead of ``n²``; nothing builds an ``n × n`` matrix.

Below ``crossover`` tokens (``mode="auto"``) the layer runs plain dense SDPA instead: there the
clustering costs more than it saves (and attention is then not restricted to clusters).
``CROSSOVER`` is the shortest length from which ``benchmarks/bench_cluster_attention.py`` measured
the clustered path faster than dense SDPA both forward and forward + backward (CPU, 1 thread, dim
256, 4 heads, batch 2; forward + backward alone crosses over earlier, near 256-512).
``mode="cluster"`` always clusters (what SMMT does by default), ``mode="dense"`` never does.

Key padding: ``key_mask [B, n]`` (True = real). Padded tokens take no part in the clustering, are
never attended, and their outputs are zeros, so their content cannot reach any real token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

# Sequence length from which the clustered path beats dense SDPA on CPU (bench_cluster_attention.py).
CROSSOVER = 1024
KMEANS_ITERATIONS = 3

Mode = Literal["auto", "cluster", "dense"]


# ----------------------------------------------------------------------------- 1. clusters
def cluster_count(n_real: torch.Tensor, n_clusters: int | None = None) -> torch.Tensor:
    """Clusters per sample: ``⌈log2 n⌉`` (SMMT's k), or ``n_clusters``; at least 1, at most n."""
    if n_clusters is None:
        wanted = torch.ceil(torch.log2(n_real.clamp(min=1).double())).long()
    else:
        wanted = torch.full_like(n_real, n_clusters)
    return torch.minimum(wanted, n_real).clamp(min=1)


@torch.no_grad()
def kmeans_clusters(
    points: torch.Tensor,
    real: torch.Tensor | None = None,
    n_clusters: int | None = None,
    iterations: int = KMEANS_ITERATIONS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched K-Means of ``points [B, n, D]`` over the ``real [B, n]`` tokens of each sample.

    Returns ``(ids [B, n], k [B])``: a cluster id in ``[0, k_b)`` per real token, ``-1`` for padding.
    The centroids start at evenly spaced real tokens (deterministic), an emptied cluster keeps its
    centroid, and padding never moves a centroid.
    """
    batch, n, _ = points.shape
    points = points.detach().float()
    if real is None:
        real = torch.ones(batch, n, dtype=torch.bool, device=points.device)
    n_real = real.sum(dim=1)
    k = cluster_count(n_real, n_clusters)
    slots = int(k.max())
    active = torch.arange(slots, device=points.device) < k[:, None]  # [B, slots]
    # positions of the real tokens first (in token order), then evenly spaced picks among them
    real_positions = torch.argsort((~real).to(torch.int8), dim=1, stable=True)
    pick = torch.arange(slots, device=points.device) * n_real.clamp(min=1)[:, None] // k[:, None]
    first = real_positions.gather(1, pick.clamp(max=n - 1))
    centroids = points.gather(1, first[..., None].expand(-1, -1, points.shape[-1]))
    flat = points.reshape(batch * n, -1)
    # row of each sample's clusters in a flat [B · (slots + 1), D] table; the extra row takes padding
    base = torch.arange(batch, device=points.device)[:, None] * (slots + 1)

    def assign(centroids: torch.Tensor) -> torch.Tensor:
        # ||p - c||² without the ||p||² term, which does not change the argmin
        distance = (centroids**2).sum(-1)[:, None, :] - points @ (2 * centroids).transpose(1, 2)
        ids = distance.masked_fill(~active[:, None, :], math.inf).argmin(dim=-1)
        return ids.masked_fill_(~real, slots)

    ids = assign(centroids)
    for _ in range(iterations):
        rows = (ids + base).flatten()
        sums = flat.new_zeros(batch * (slots + 1), flat.shape[1]).index_add_(0, rows, flat)
        counts = torch.bincount(rows, minlength=batch * (slots + 1)).to(flat.dtype)[:, None]
        means = (sums / counts.clamp(min=1)).view(batch, slots + 1, -1)[:, :slots]
        centroids = torch.where(counts.view(batch, slots + 1, 1)[:, :slots] > 0, means, centroids)
        updated = assign(centroids)
        if torch.equal(updated, ids):  # a fixed point: further steps would change nothing
            break
        ids = updated
    return ids.masked_fill_(~real, -1), k


# ----------------------------------------------------------------------------- 2. blocks
@dataclass
class BlockLayout:
    """Where each token sits among the padded blocks: ``slot_of_token [B, n]`` (``blocks · width``
    for padding, i.e. nowhere), ``token_of_slot [B, blocks · width]`` (``n`` for an empty slot) and
    ``block_of_token [B, n]`` (-1 for padding)."""

    slot_of_token: torch.Tensor
    token_of_slot: torch.Tensor
    block_of_token: torch.Tensor
    blocks: int
    width: int


@torch.no_grad()
def block_layout(ids: torch.Tensor, k: torch.Tensor) -> BlockLayout:
    """Blocks of at most ``w_b = ⌈n_b / k_b⌉`` tokens of one cluster each (see the module doc)."""
    batch, n = ids.shape
    device = ids.device
    real = ids >= 0
    n_real = real.sum(dim=1)
    capacity = (n_real.clamp(min=1) + k - 1) // k  # w_b
    width = int(capacity.max())
    slots = int(k.max()) + 1  # the last cluster id collects the padding
    group = torch.where(real, ids, slots - 1)
    size = torch.zeros(batch, slots, dtype=torch.long, device=device)
    size.scatter_add_(1, group, torch.ones_like(group))
    size[:, -1] = 0  # padding gets no block
    parts = (size + capacity[:, None] - 1) // capacity[:, None]  # blocks per cluster
    first_block = parts.cumsum(dim=1) - parts
    cluster_start = size.cumsum(dim=1) - size
    order = torch.argsort(group, dim=1, stable=True)  # tokens sorted by cluster, then position
    sorted_group = group.gather(1, order)
    rank = torch.arange(n, device=device) - cluster_start.gather(1, sorted_group)
    s, m = size.gather(1, sorted_group), parts.gather(1, sorted_group).clamp(min=1)
    part = rank * m // s.clamp(min=1)  # near-equal parts of the cluster, in token order
    part_start = (part * s + m - 1) // m
    block = first_block.gather(1, sorted_group) + part
    blocks = max(int(parts.sum(dim=1).max()), 1)
    slot_sorted = torch.where(
        sorted_group < slots - 1, block * width + rank - part_start, blocks * width
    )
    slot_of_token = torch.empty_like(slot_sorted).scatter_(1, order, slot_sorted)
    token_of_slot = torch.full((batch, blocks * width + 1), n, dtype=torch.long, device=device)
    token_of_slot.scatter_(1, slot_of_token, torch.arange(n, device=device).expand(batch, n))
    block_of_token = torch.where(real, slot_of_token // width, -1)
    return BlockLayout(slot_of_token, token_of_slot[:, :-1], block_of_token, blocks, width)


# ----------------------------------------------------------------------------- 3. attention
def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[..., L, D]`` -> ``[..., heads, L, D / heads]``."""
    *lead, length, dim = x.shape
    return x.view(*lead, length, heads, dim // heads).transpose(-3, -2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    *lead, heads, length, head_dim = x.shape
    return x.transpose(-3, -2).reshape(*lead, length, heads * head_dim)


def dense_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    key_mask: torch.Tensor | None = None,
    dropout: float = 0.0,
) -> torch.Tensor:
    """Multi-head SDPA over ``[B, n, D]`` inputs; padded tokens' outputs are zeros."""
    mask = None
    if key_mask is not None:
        # a sample without any real token would give NaN rows: let it see everything, zero it after
        mask = (key_mask | ~key_mask.any(dim=1, keepdim=True))[:, None, None, :]
    out = _merge(
        F.scaled_dot_product_attention(*(_heads(t, heads) for t in (q, k, v)), mask, dropout)
    )
    return out if key_mask is None else out * key_mask[..., None].to(out.dtype)


def blocked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    layout: BlockLayout,
    dropout: float = 0.0,
    keep_weights: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention within the blocks of ``layout`` (``q, k, v [B, n, D]``).

    Returns the outputs ``[B, n, D]`` (zeros for padding) and, with ``keep_weights``, the weights
    scattered into a dense ``[B, heads, n, n]`` (zero outside the blocks; for tests and maps).
    """
    batch, n, dim = q.shape
    blocks, width = layout.blocks, layout.width
    filled = layout.token_of_slot < n
    offsets = torch.arange(batch, device=q.device)[:, None] * n
    # an empty slot reads token 0: hidden as a key by ``filled``, and its output is never read
    rows = (layout.token_of_slot.masked_fill(~filled, 0) + offsets).flatten()

    def gather(x: torch.Tensor) -> torch.Tensor:  # [B, n, D] -> [B · blocks, heads, w, D / heads]
        return _heads(x.reshape(batch * n, dim).index_select(0, rows).view(-1, width, dim), heads)

    visible = filled.view(batch * blocks, 1, 1, width)
    visible = visible | ~visible.any(dim=-1, keepdim=True)  # empty blocks: no NaN, never read
    qb, kb, vb = gather(q), gather(k), gather(v)
    weights = None
    if keep_weights:
        scores = (qb @ kb.transpose(-2, -1)) / math.sqrt(dim // heads)
        block_weights = torch.softmax(scores.masked_fill(~visible, -math.inf), dim=-1)
        out = F.dropout(block_weights, dropout) @ vb
        weights = _dense_weights(block_weights.detach(), layout, batch, heads, n)
    else:
        out = F.scaled_dot_product_attention(qb, kb, vb, visible, dropout)
    out = _merge(out).reshape(batch * blocks * width, dim)
    real = layout.block_of_token >= 0
    slots = layout.slot_of_token.masked_fill(~real, 0)
    slots = slots + torch.arange(batch, device=q.device)[:, None] * (blocks * width)
    out = out.index_select(0, slots.flatten()).view(batch, n, dim)
    return out.masked_fill_(~real[..., None], 0.0), weights


def _dense_weights(block_weights, layout: BlockLayout, batch: int, heads: int, n: int):
    """Block weights ``[B · blocks, heads, w, w]`` -> ``[B, heads, n, n]`` (token order)."""
    width = layout.width
    tokens = layout.token_of_slot.view(batch, layout.blocks, width)
    query = tokens[:, :, :, None].expand(-1, -1, -1, width)
    key = tokens[:, :, None, :].expand(-1, -1, width, -1)
    flat = (query * (n + 1) + key).reshape(batch, 1, -1).expand(-1, heads, -1)
    values = block_weights.view(batch, layout.blocks, heads, width, width).transpose(1, 2)
    dense = block_weights.new_zeros(batch, heads, (n + 1) * (n + 1))
    dense.scatter_(2, flat, values.reshape(batch, heads, -1))
    return dense.view(batch, heads, n + 1, n + 1)[:, :, :n, :n]


class ClusterAttention(nn.Module):
    """Multi-head self-attention within K-Means clusters of the queries (see the module doc).

    After a call: ``last_path`` ("cluster" or "dense"), ``last_clusters`` and ``last_blocks``
    (``[B, n]`` ids, -1 for padding; None on the dense path) and, with ``keep_weights=True``,
    ``last_weights [B, heads, n, n]``.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 4,
        dropout: float = 0.0,
        *,
        n_clusters: int | None = None,
        iterations: int = KMEANS_ITERATIONS,
        mode: Mode = "auto",
        crossover: int = CROSSOVER,
        keep_weights: bool = False,
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        if mode not in ("auto", "cluster", "dense"):
            raise ValueError(f"mode {mode!r}: choose auto, cluster or dense")
        self.heads, self.dropout = heads, dropout
        self.n_clusters, self.iterations = n_clusters, iterations
        self.mode, self.crossover, self.keep_weights = mode, crossover, keep_weights
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.last_path: str | None = None
        self.last_clusters: torch.Tensor | None = None
        self.last_blocks: torch.Tensor | None = None
        self.last_weights: torch.Tensor | None = None

    def uses_clusters(self, n: int) -> bool:
        return self.mode == "cluster" or (self.mode == "auto" and n >= self.crossover)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.query(x), self.key(x), self.value(x)
        dropout = self.dropout if self.training else 0.0
        self.last_clusters = self.last_blocks = self.last_weights = None
        if not self.uses_clusters(x.shape[1]):
            self.last_path = "dense"
            return self.out(dense_attention(q, k, v, self.heads, key_mask, dropout))
        self.last_path = "cluster"
        ids, counts = kmeans_clusters(q, key_mask, self.n_clusters, self.iterations)
        layout = block_layout(ids, counts)
        mixed, self.last_weights = blocked_attention(
            q, k, v, self.heads, layout, dropout, self.keep_weights
        )
        self.last_clusters, self.last_blocks = ids, layout.block_of_token
        return self.out(mixed)


class ClusterAttentionBlock(nn.Module):
    """Pre-norm cluster self-attention + feed-forward, each with a residual path (a transformer
    encoder layer whose attention is ``ClusterAttention``)."""

    def __init__(
        self, dim: int, heads: int = 4, dropout: float = 0.0, hidden: int | None = None, **options
    ):
        super().__init__()
        self.norm_attention = nn.LayerNorm(dim)
        self.attention = ClusterAttention(dim, heads, dropout, **options)
        self.norm_ff = nn.LayerNorm(dim)
        hidden = hidden or 2 * dim
        self.feed_forward = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attention(self.norm_attention(x), key_mask)
        return x + self.feed_forward(self.norm_ff(x))
