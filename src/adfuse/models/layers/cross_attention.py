"""Multi-head cross-attention, shared by ACMCA, SMMT/3MT, the anchored Q-former and R-GenIMA.

``CrossAttention(dim, heads)(query, key_value, key_mask=None)`` attends from query tokens
``[B, Q, D]`` over key/value tokens ``[B, K, D]``. ``key_mask`` (``[B, K]``, True = may be attended)
hides tokens (padding, absent modalities); a query row with no visible key gets a zero output
instead of NaN, so an absent key modality contributes nothing. The attention weights of the last
call are kept in ``last_weights`` (``[B, heads, Q, K]``) for interpretation.
"""

from __future__ import annotations

import torch
from torch import nn


class CrossAttention(nn.Module):
    """Scaled dot-product multi-head attention with separate query and key/value inputs."""

    def __init__(
        self,
        dim: int,
        heads: int = 4,
        dropout: float = 0.0,
        key_dim: int | None = None,
        keep_weights: bool = True,
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        key_dim = key_dim or dim
        self.heads, self.head_dim = heads, dim // heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(key_dim, dim)
        self.value = nn.Linear(key_dim, dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.keep_weights = keep_weights
        self.last_weights: torch.Tensor | None = None

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        return x.view(batch, tokens, self.heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        query: torch.Tensor,
        key_value: torch.Tensor,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        q = self._split(self.query(query))
        k = self._split(self.key(key_value))
        v = self._split(self.value(key_value))
        scores = q @ k.transpose(-2, -1) / self.head_dim**0.5  # [B, H, Q, K]
        if key_mask is not None:
            visible = key_mask[:, None, None, :].to(torch.bool)
            scores = scores.masked_fill(~visible, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1)
        if key_mask is not None:
            # rows with no visible key: zero weights (no NaN, no information)
            weights = weights * visible.any(dim=-1, keepdim=True).to(weights.dtype)
        if self.keep_weights:
            self.last_weights = weights.detach()
        mixed = self.dropout(weights) @ v  # [B, H, Q, head_dim]
        batch, _, queries, _ = mixed.shape
        return self.out(mixed.transpose(1, 2).reshape(batch, queries, -1))


class CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention + feed-forward, each with a residual path (a transformer decoder
    block without self-attention)."""

    def __init__(self, dim: int, heads: int = 4, dropout: float = 0.0, hidden: int | None = None):
        super().__init__()
        self.norm_query = nn.LayerNorm(dim)
        self.norm_key = nn.LayerNorm(dim)
        self.attention = CrossAttention(dim, heads, dropout)
        self.norm_ff = nn.LayerNorm(dim)
        hidden = hidden or 2 * dim
        self.feed_forward = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )

    def forward(self, query, key_value, key_mask=None) -> torch.Tensor:
        attended = self.attention(self.norm_query(query), self.norm_key(key_value), key_mask)
        query = query + attended
        return query + self.feed_forward(self.norm_ff(query))
