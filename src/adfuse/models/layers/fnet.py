"""FNet (Lee-Thorp et al., NAACL 2022): token mixing by the real part of a 2-D discrete Fourier
transform over the token and hidden axes, used by ACMCA's deep feature extraction.

``fourier_mixing(x)`` is ``Re(FFT2(x))`` over the last two axes of ``x [B, T, D]``: every output
element depends on every input element (global mixing, as attention), with no learned weight and
O(T D log(T D)) operations instead of attention's O(T^2 D). ``FNetBlock`` is FNet's encoder block:
mixing and a feed-forward, each with a residual path and a LayerNorm after it (post-norm, as FNet).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def fourier_mixing(x: torch.Tensor) -> torch.Tensor:
    """``Re(DFT_tokens(DFT_hidden(x)))`` over the last two axes (FNet eq. 1); same shape as x."""
    # torch's CPU FFT has no half precision: compute such inputs in float32
    wide = x if x.dtype in (torch.float32, torch.float64) else x.float()
    return torch.fft.fft2(wide, dim=(-2, -1)).real.to(x.dtype)


def fourier_mixing_flops(tokens: int, dim: int) -> int:
    """Real floating-point operations of ``fourier_mixing`` on one ``[tokens, dim]`` sample: the
    usual ``5 N log2 N`` count of a complex FFT of ``N = tokens * dim`` points. ``FlopCounterMode``
    counts no FFT, so comparisons with attention's counted FLOPs add this."""
    points = tokens * dim
    return round(5 * points * math.log2(points)) if points > 1 else 0


class FourierMixing(nn.Module):
    """``fourier_mixing`` as a module (it has no parameters: the mixing is fixed)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fourier_mixing(x)


class FNetBlock(nn.Module):
    """x -> LayerNorm(x + Re(FFT2(x))) -> LayerNorm(x + FeedForward(x)); ``[B, T, D]`` kept."""

    def __init__(self, dim: int, hidden: int | None = None, dropout: float = 0.0):
        super().__init__()
        hidden = hidden or 2 * dim
        self.mixing = FourierMixing()
        self.norm_mixing = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )
        self.norm_feed_forward = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm_mixing(x + self.mixing(x))
        return self.norm_feed_forward(x + self.feed_forward(x))
