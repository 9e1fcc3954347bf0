"""The shared sparse MoE layer: top-k routing, grouped dispatch, capacity, balancing, routers."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from adfuse.models.layers.moe import (
    SparseMoE,
    cv_squared,
    load_balancing_loss,
    specialization_loss,
)


def layer(dim=8, hidden=16, experts=6, k=2, seed=0, **options) -> SparseMoE:
    torch.manual_seed(seed)
    return SparseMoE(dim, hidden, experts, k, **options)


def expert(moe: SparseMoE, e: int, x: torch.Tensor) -> torch.Tensor:
    """Expert ``e`` applied densely to every row (the reference for the grouped dispatch)."""
    params = moe.experts
    return F.linear(F.gelu(F.linear(x, params.w1[e], params.b1[e])), params.w2[e], params.b2[e])


def test_top_k_picks_the_largest_gates_and_mixes_those_experts():
    moe = layer(experts=6, k=2, noisy=False).eval()
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        out = moe(x)
    tokens = x.reshape(-1, 8)
    logits = tokens @ moe.router.weight[0]
    routing = moe.last_routing
    expected = logits.topk(2, dim=1)
    torch.testing.assert_close(routing.indices, expected.indices)
    chosen = torch.zeros_like(logits, dtype=torch.bool).scatter(1, routing.indices, True)
    smallest_chosen = logits.masked_fill(~chosen, torch.inf).min(dim=1).values
    largest_other = logits.masked_fill(chosen, -torch.inf).max(dim=1).values
    assert (smallest_chosen > largest_other).all()
    torch.testing.assert_close(routing.gates, torch.softmax(expected.values, dim=1))
    reference = torch.zeros_like(tokens)
    with torch.no_grad():
        for slot in range(2):
            every = torch.stack([expert(moe, e, tokens) for e in range(6)], dim=1)  # [N, E, D]
            picked = every[torch.arange(len(tokens)), routing.indices[:, slot]]
            reference += routing.gates[:, slot : slot + 1] * picked
    torch.testing.assert_close(out.reshape(-1, 8), reference, rtol=1e-5, atol=1e-6)


def test_one_expert_with_k1_equals_a_dense_ffn():
    moe = layer(experts=1, k=1, noisy=True).train()  # noise cannot change a choice of one
    dense = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 8))
    with torch.no_grad():
        dense[0].weight.copy_(moe.experts.w1[0])
        dense[0].bias.copy_(moe.experts.b1[0])
        dense[2].weight.copy_(moe.experts.w2[0])
        dense[2].bias.copy_(moe.experts.b2[0])
    x = torch.randn(4, 7, 8)
    torch.testing.assert_close(moe(x), dense(x), rtol=1e-6, atol=1e-6)
    assert moe.last_routing.balance.item() == 0.0


def test_balancing_loss_is_minimal_for_uniform_routing():
    uniform = torch.full((6,), 5.0)
    assert load_balancing_loss(uniform, uniform).item() == 0.0
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        importance = torch.rand(6, generator=generator) * 10
        load = torch.rand(6, generator=generator) * 10
        assert load_balancing_loss(importance, load) > 0
    assert cv_squared(torch.tensor([1.0, 0, 0, 0])) > cv_squared(torch.tensor([1.0, 1, 0, 0]))
    # in the layer: tokens spread evenly over the experts score 0; all on one expert score high
    moe = layer(dim=4, experts=4, k=1, noisy=False).eval()
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(4)[None] * 10)
    moe(torch.eye(4).repeat(3, 1))
    assert moe.last_routing.balance.item() == pytest.approx(0.0, abs=1e-6)
    moe(torch.eye(4)[[0]].repeat(12, 1))
    assert moe.last_routing.balance.item() > 1.0


def test_gradients_reach_the_router_through_gates_noise_and_balancing():
    moe = layer(experts=6, k=2, noisy=True).train()
    x = torch.randn(32, 8)
    moe(x).pow(2).sum().backward()
    assert moe.router.weight.grad.abs().sum() > 0
    assert moe.router.noise.grad.abs().sum() > 0
    moe.zero_grad()
    moe(x)
    moe.last_routing.balance.backward()  # the smooth load estimate has a gradient
    assert moe.router.weight.grad.abs().sum() > 0
    assert moe.router.noise.grad.abs().sum() > 0


def test_capacity_drops_overflow_in_training_only():
    moe = layer(dim=4, experts=4, k=1, noisy=False, capacity_factor=1.0)
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(4)[None] * 10)
    x = torch.eye(4)[[0, 0, 0, 0, 0, 0, 1, 2]]  # six tokens want expert 0; capacity = 2
    moe.train()
    out = moe(x)
    kept = moe.last_routing.kept[:, 0]
    assert kept.tolist() == [True, True, False, False, False, False, True, True]
    assert (out[~kept] == 0).all() and (out[kept] != 0).any()
    assert moe.last_routing.counts(4).tolist() == [2, 1, 1, 0]
    moe.eval()
    moe(x)
    assert moe.last_routing.kept.all()


def test_noise_only_in_training():
    moe = layer(experts=6, k=2, noisy=True)
    x = torch.randn(20, 8)
    moe.eval()
    first, second = moe(x), moe(x)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    clean = x @ moe.router.weight[0]
    torch.testing.assert_close(moe.last_routing.logits, clean)
    moe.train()
    moe(x)
    assert not torch.allclose(moe.last_routing.logits, clean)


def test_each_token_uses_the_router_it_is_given():
    moe = layer(experts=6, k=2, noisy=False, n_routers=3).eval()
    x = torch.randn(9, 8)
    router = torch.tensor([0, 1, 2] * 3)
    with torch.no_grad():
        out = moe(x, router)
        for r in range(3):
            single = layer(experts=6, k=2, noisy=False).eval()
            single.experts.load_state_dict(moe.experts.state_dict())
            single.router.weight.copy_(moe.router.weight[r : r + 1])
            torch.testing.assert_close(out[router == r], single(x[router == r]))


def test_activation_counts_accumulate_until_reset():
    moe = layer(experts=6, k=2).eval()
    moe(torch.randn(10, 8))
    moe(torch.randn(5, 8))
    assert moe.activation_counts.sum().item() == 30
    assert "activation_counts" not in moe.state_dict()
    moe.reset_counts()
    assert moe.activation_counts.sum().item() == 0


def test_specialization_loss_is_the_cross_entropy_of_the_masked_tokens():
    logits = torch.randn(5, 4, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, 0])
    mask = torch.tensor([True, False, True, True, False])
    loss = specialization_loss(logits, target, mask)
    torch.testing.assert_close(loss, F.cross_entropy(logits[mask], target[mask]))
    empty = specialization_loss(logits, target, torch.zeros(5, dtype=torch.bool))
    assert empty.item() == 0.0 and empty.requires_grad
