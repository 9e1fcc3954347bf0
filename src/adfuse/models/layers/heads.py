"""Prediction heads shared by the models."""

from __future__ import annotations

from torch import nn


class MLPHead(nn.Sequential):
    """LayerNorm -> Linear -> GELU -> Dropout -> Linear: a pooled vector to the task's outputs."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float = 0.1):
        super().__init__(
            nn.LayerNorm(in_dim),
            nn.Linear(in_dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, out_dim),
        )
