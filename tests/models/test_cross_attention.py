"""The shared cross-attention: hidden keys change nothing; a query with no visible key gets zeros."""

from __future__ import annotations

import torch

from adfuse.models.layers.cross_attention import CrossAttention, CrossAttentionBlock


def test_hidden_keys_have_no_influence():
    torch.manual_seed(0)
    attention = CrossAttention(16, heads=4).eval()
    query, keys = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    mask = torch.tensor([[True, True, False, True, False], [True] * 5])
    out = attention(query, keys, mask)
    weights = attention.last_weights
    assert weights.shape == (2, 4, 3, 5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 3))
    assert (weights[0, :, :, [2, 4]] == 0).all()
    noisy = keys.clone()
    noisy[0, [2, 4]] = 100 * torch.randn(2, 16)
    torch.testing.assert_close(attention(query, noisy, mask), out)


def test_no_visible_key_gives_the_output_bias_only():
    attention = CrossAttention(8, heads=2).eval()
    query, keys = torch.randn(1, 2, 8), torch.randn(1, 4, 8)
    out = attention(query, keys, torch.zeros(1, 4, dtype=torch.bool))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, attention.out.bias.expand(1, 2, 8))


def test_matches_torch_multihead_attention():
    torch.manual_seed(1)
    ours = CrossAttention(12, heads=3).eval()
    reference = torch.nn.MultiheadAttention(12, 3, batch_first=True).eval()
    with torch.no_grad():
        reference.in_proj_weight.copy_(
            torch.cat([ours.query.weight, ours.key.weight, ours.value.weight])
        )
        reference.in_proj_bias.copy_(torch.cat([ours.query.bias, ours.key.bias, ours.value.bias]))
        reference.out_proj.weight.copy_(ours.out.weight)
        reference.out_proj.bias.copy_(ours.out.bias)
    query, keys = torch.randn(2, 3, 12), torch.randn(2, 6, 12)
    mask = torch.rand(2, 6) > 0.3
    mask[:, 0] = True
    expected, _ = reference(query, keys, keys, key_padding_mask=~mask)
    torch.testing.assert_close(ours(query, keys, mask), expected, rtol=1e-5, atol=1e-5)


def test_block_has_residual_paths_and_gradients():
    block = CrossAttentionBlock(8, heads=2)
    query = torch.randn(2, 3, 8, requires_grad=True)
    out = block(query, torch.randn(2, 4, 8))
    out.sum().backward()
    assert out.shape == (2, 3, 8) and query.grad is not None
    assert all(p.grad is not None for p in block.parameters())
