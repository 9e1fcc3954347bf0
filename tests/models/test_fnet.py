"""The FNet block: its mixing is the real part of a 2-D DFT, fixed (no weights), global, and
cheaper than dense attention (counted operations; wall-clock is in benchmarks/bench_fnet.py)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from adfuse.models.layers.fnet import FNetBlock, FourierMixing, fourier_mixing, fourier_mixing_flops


def test_mixing_is_the_real_part_of_numpys_2d_dft():
    x = torch.randn(3, 7, 10, dtype=torch.float64)
    expected = np.fft.fft2(x.numpy(), axes=(-2, -1)).real
    np.testing.assert_allclose(fourier_mixing(x).numpy(), expected, rtol=1e-10, atol=1e-10)
    half = x.to(torch.bfloat16)
    assert fourier_mixing(half).dtype == torch.bfloat16


def test_mixing_equals_dft_matrices_on_both_axes():
    """Re(F_T x F_D) with the DFT matrices F_n[j, k] = exp(-2 pi i j k / n): tokens and hidden."""

    def dft(n: int) -> np.ndarray:
        index = np.arange(n)
        return np.exp(-2j * np.pi * np.outer(index, index) / n)

    x = np.random.default_rng(0).normal(size=(5, 6))
    expected = (dft(5) @ x @ dft(6)).real
    got = fourier_mixing(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_mixing_has_no_learnable_weights_and_block_only_norms_and_feed_forward():
    assert list(FourierMixing().parameters()) == []
    block = FNetBlock(16)
    owners = {name.split(".")[0] for name, _ in block.named_parameters()}
    assert owners == {"norm_mixing", "feed_forward", "norm_feed_forward"}
    # fixed: the same input mixes the same way in two freshly initialised blocks
    torch.manual_seed(0)
    x = torch.randn(2, 8, 16)
    torch.testing.assert_close(FNetBlock(16).mixing(x), FNetBlock(16).mixing(x))


def test_mixing_is_global_every_output_depends_on_every_input():
    x = torch.randn(1, 6, 8, dtype=torch.float64, requires_grad=True)
    output = fourier_mixing(x)
    gradient = torch.autograd.grad(output[0, 0, 0], x)[0]
    assert (gradient.abs() > 1e-12).all()


def test_block_keeps_the_shape_and_uses_the_mixing():
    torch.manual_seed(0)
    block = FNetBlock(16).eval()
    x = torch.randn(2, 8, 16)
    out = block(x)
    assert out.shape == x.shape
    without_mixing = block.norm_mixing(x)
    without_mixing = block.norm_feed_forward(without_mixing + block.feed_forward(without_mixing))
    assert not torch.allclose(out, without_mixing, atol=1e-3)


def test_mixing_costs_far_fewer_operations_than_dense_attention():
    """n = 512 tokens of width 64: the mixing's counted matmul FLOPs (none: a DFT done by matrix
    products would show here) plus its FFT count, against a multi-head self-attention layer's."""
    tokens, dim = 512, 64
    x = torch.randn(1, tokens, dim)
    attention = torch.nn.MultiheadAttention(dim, 4, batch_first=True)
    with FlopCounterMode(display=False) as counter:
        attention(x, x, x, need_weights=False)
    attention_flops = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        fourier_mixing(x)
    mixing_flops = counter.get_total_flops() + fourier_mixing_flops(tokens, dim)
    assert mixing_flops <= 0.3 * attention_flops, (mixing_flops, attention_flops)
