"""Pooling over tokens: the mean of the real tokens of each sample."""

from __future__ import annotations

import torch


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the token axis of ``tokens [B, T, D]``, counting only ``mask [B, T]`` (True = real).

    A sample with no real token pools to zeros (never NaN).
    """
    if mask is None:
        return tokens.mean(dim=1)
    weight = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1.0)
