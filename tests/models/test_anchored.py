"""The anchored model's mechanisms: stages (phase 1, one LoRA round per anchor), the Q-former's
token count, absent modalities, the ablations (query count, output-level fusion, adaptation),
aggregation and the efficiency report."""

from __future__ import annotations

import pytest
import torch

from adfuse import models
from adfuse.models.foundation import FoundationEncoder
from adfuse.train import _set_trainable
from tests.models.conftest import PREPARE, make_spec, random_batch

SPEC = make_spec()
MODALITIES = ["t1", "fmri", "clinical", "genotype"]  # groups smri, fmri, text, genetics


def build(**overrides):
    torch.manual_seed(0)
    return models.create(
        "anchored", SPEC, "cn_vs_ad", modalities=MODALITIES, prepare=PREPARE, **overrides
    )


@pytest.fixture(scope="module")
def model():
    return build()


def run(model, batch):
    model.eval()
    with torch.no_grad():
        return model(batch)


def test_stages_are_phase1_then_one_round_per_anchor(model):
    assert [s.name for s in model.stages()] == [
        "unimodal",
        "anchor_smri",
        "anchor_fmri",
        "anchor_text",
        "anchor_genetics",
    ]


def test_lora_is_the_only_trainable_part_of_the_anchor_in_phase2(model):
    names = dict(model.named_parameters())
    for stage in model.stages()[1:]:
        anchor = stage.name.removeprefix("anchor_")
        _set_trainable(model, stage)
        trainable = [n for n, p in names.items() if p.requires_grad]
        in_encoders = [n for n in trainable if n.startswith("encoders.")]
        assert in_encoders and all(
            n.startswith(f"encoders.{anchor}.") and ".lora_" in n for n in in_encoders
        )
        others = {n.split(".")[0] for n in trainable if not n.startswith("encoders.")}
        assert others == {"qformers", "round_heads"}
        assert all(f".{anchor}." in n for n in trainable)
        # one optimiser step on the round moves LoRA, never the anchor's base weights
        model.begin_stage(stage)
        model.train()
        before = {n: p.detach().clone() for n, p in names.items()}
        optimizer = torch.optim.SGD([p for p in names.values() if p.requires_grad], lr=1.0)
        batch = random_batch(model, n=4, seed=1, present="all")
        model.loss(batch, model(batch)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        changed = {n for n, p in names.items() if not torch.equal(p, before[n])}
        assert changed and changed <= set(trainable)
        assert any(".lora_" in n for n in changed)
    _set_trainable(model, model.stages()[0])
    phase1 = [n for n, p in names.items() if p.requires_grad]
    assert not any(".lora_" in n for n in phase1)
    assert {n.split(".")[0] for n in phase1} == {"encoders", "heads"}
    model.begin_stage(None)
    for p in names.values():
        p.requires_grad_(True)


def capture_anchor_tokens(model, batch, monkeypatch) -> dict:
    """The extra tokens each anchor encoder receives (None when it gets none)."""
    seen = {}
    original = FoundationEncoder.run

    def spy(self, embeddings, mask, extra=None, extra_mask=None):
        if extra is not None or self.__dict__.get("_spied"):
            seen[type(self).__name__] = (embeddings.shape[1], None if extra is None else extra)
        return original(self, embeddings, mask, extra, extra_mask)

    monkeypatch.setattr(FoundationEncoder, "run", spy)
    run(model, batch)
    return seen


@pytest.mark.parametrize("queries", [1, 4, 16])
def test_h_a_has_one_query_set_per_auxiliary_modality_plus_the_cross_modal_one(
    queries, monkeypatch
):
    model = build(queries=queries)
    batch = random_batch(model, n=3, seed=2, present="all")
    features = {g: model.features(batch, g) for g in model.groups}
    for anchor in model.groups:
        auxiliary = {m: features[m] for m in model.auxiliary[anchor]}
        h_a, mask = model.qformers[anchor](auxiliary)
        assert h_a.shape == (3, 3 * queries + queries, model.encoders[anchor].width)
        assert mask.all()
    seen = capture_anchor_tokens(model, batch, monkeypatch)
    assert {extra.shape[1] for _, extra in seen.values()} == {4 * queries}


def test_an_absent_auxiliary_modality_drops_its_queries(model):
    batch = random_batch(model, n=2, seed=3, present="all")
    batch.present["genotype"] = torch.tensor([True, False])
    features = {g: model.features(batch, g) for g in model.groups}
    h_a, mask = model.qformers["smri"]({m: features[m] for m in model.auxiliary["smri"]})
    q = model.config.queries
    order = model.auxiliary["smri"]  # fmri, text, genetics
    block = order.index("genetics")
    assert mask[0].all()
    assert not mask[1, block * q : (block + 1) * q].any()
    assert mask[1, : block * q].all() and mask[1, -q:].all()  # cross-modal queries stay
    assert (h_a[1, block * q : (block + 1) * q] == 0).all()


def test_zero_queries_is_late_fusion_of_the_phase1_models():
    """No auxiliary token: each round is its anchor alone, starting from its phase-1 head, so the
    aggregated output is the mean of the uni-modal probabilities (late fusion)."""
    model = build(queries=0)
    assert not hasattr(model, "qformers")
    batch = random_batch(model, n=5, seed=4)
    final = run(model, batch)
    model.begin_stage(model.stages()[0])
    phase1 = run(model, batch)
    model.begin_stage(None)
    torch.testing.assert_close(final, phase1)
    # with queries, the auxiliary tokens change what the anchors compute from the start
    with_queries = build(queries=4)
    with_queries.begin_stage(with_queries.stages()[0])
    phase1 = run(with_queries, batch)
    with_queries.begin_stage(None)
    assert not torch.allclose(run(with_queries, batch), phase1)


def test_an_absent_anchor_skips_its_round(model):
    batch = random_batch(model, n=2, seed=5, present="all")
    only_t1 = batch.without(["fmri", "clinical", "genotype"])
    model.eval()
    with torch.no_grad():
        out = model(only_t1)
        rounds = model._outputs
    assert set(rounds) == set(model.groups)
    assert [len(rounds[g][0]) for g in model.groups] == [2, 0, 0, 0]
    torch.testing.assert_close(out, rounds["smri"][1].log_softmax(dim=1))


def test_confidence_weighting_differs_from_the_mean():
    batch = random_batch(build(), n=4, seed=6, present="all")
    mean_model, confident = build(), build(aggregation="confidence")
    confident.load_state_dict(mean_model.state_dict())
    with torch.no_grad():  # make the rounds disagree
        for head in list(mean_model.round_heads.values()) + list(confident.round_heads.values()):
            head.bias.copy_(torch.tensor([2.0, -2.0]))
        mean_model.round_heads["smri"].bias.copy_(torch.tensor([-3.0, 3.0]))
        confident.round_heads["smri"].bias.copy_(torch.tensor([-3.0, 3.0]))
    assert not torch.allclose(run(mean_model, batch), run(confident, batch))
    torch.testing.assert_close(run(confident, batch).exp().sum(1), torch.ones(4))


@pytest.mark.parametrize("interaction", ["concat", "linear", "attention"])
def test_output_level_fusion_feeds_nothing_to_the_anchor(interaction, monkeypatch):
    model = build(interaction=interaction)
    batch = random_batch(model, n=3, seed=7, present="all")
    assert capture_anchor_tokens(model, batch, monkeypatch) == {}
    model.train()
    model.loss(batch, model(batch)).backward()
    fused = [n for n, p in model.named_parameters() if n.startswith(("fusion", "qformers"))]
    assert fused and all(model.get_parameter(n).grad is not None for n in fused)
    with torch.no_grad():  # the Q-former reaches the output through the fusion
        for head in model.round_heads.values():
            head.weight.normal_()
        before = run(model, batch)
        model.qformers["smri"].crossmodal_queries.add_(torch.randn(model.config.queries, 64))
        assert not torch.allclose(run(model, batch), before)


def test_frozen_adaptation_trains_no_encoder_weight_in_a_round():
    model = build(adaptation="frozen")
    for stage in model.stages()[1:]:
        assert not any(p.startswith(("encoders", "anchor_copies")) for p in stage.trainable)
    assert not any(".lora_" in n for n, _ in model.named_parameters())


def test_full_fine_tuning_trains_a_copy_that_starts_from_phase1():
    model = build(adaptation="full")
    round_smri = model.stages()[1]
    assert all(p.startswith(("anchor_copies.smri", "qformers.smri", "round_heads.smri"))
               for p in round_smri.trainable)  # fmt: skip
    with torch.no_grad():
        model.encoders["smri"].backbone.norm.weight.add_(0.5)  # "phase 1" moved it
    model.begin_stage(round_smri, fresh=True)
    torch.testing.assert_close(
        model.anchor_copies["smri"].backbone.norm.weight,
        model.encoders["smri"].backbone.norm.weight,
    )
    with torch.no_grad():
        model.anchor_copies["smri"].backbone.norm.weight.add_(1.0)
    model.begin_stage(round_smri, fresh=False)  # a resumed round keeps its weights
    assert not torch.equal(
        model.anchor_copies["smri"].backbone.norm.weight,
        model.encoders["smri"].backbone.norm.weight,
    )


def test_round_features_are_cached_and_identical(model):
    batch = random_batch(model, n=4, seed=8)
    stage = model.stages()[1]
    model.begin_stage(stage)
    model.eval()
    with torch.no_grad():
        first = model(batch)
        assert model._feature_cache
        second = model(batch)
        model._feature_cache.clear()
        fresh = model(batch)
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    torch.testing.assert_close(fresh, first, rtol=1e-5, atol=1e-6)
    model.begin_stage(None)
    assert not model._feature_cache


def test_round_features_carry_over_to_the_next_round(model, monkeypatch):
    """The auxiliary features of one round are reused by the next (phase-1 weights, LoRA off);
    phase 1 and a resumed round start empty."""
    batch = random_batch(model, n=4, seed=10)
    phase1, first, second = model.stages()[:3]
    model.begin_stage(first)
    model.eval()
    with torch.no_grad():
        model(batch)
    kept = dict(model._feature_cache)
    model.begin_stage(second)
    assert model._feature_cache == kept
    computed = []
    original = model._compute_features
    monkeypatch.setattr(
        model, "_compute_features", lambda b, g: computed.append(g) or original(b, g)
    )
    with torch.no_grad():
        reused = model(batch)
    shared = set(model.auxiliary[first.name.removeprefix("anchor_")])
    shared &= set(model.auxiliary[second.name.removeprefix("anchor_")])
    assert shared and not shared & set(computed)  # no shared group was encoded again
    model._feature_cache.clear()
    with torch.no_grad():
        recomputed = model(batch)
    torch.testing.assert_close(reused, recomputed, rtol=1e-5, atol=1e-6)
    model.begin_stage(second, fresh=False)  # resumed after a checkpoint load
    assert not model._feature_cache
    with torch.no_grad():
        model(batch)
    model.begin_stage(phase1)
    assert not model._feature_cache
    model.begin_stage(None)


def test_inference_cache_reuses_phase1_features_across_patterns(model, monkeypatch):
    """Inside ``inference_cache`` (evaluate_patterns), a subject's phase-1 features are computed
    once per availability of the group and reused; outputs equal uncached ones."""
    batch = random_batch(model, n=4, seed=9)
    withheld = batch.without(["fmri"])
    model.begin_stage(None)
    expected = [run(model, batch), run(model, withheld), run(model, batch)]
    calls = []
    compute = model._compute_features
    monkeypatch.setattr(model, "_compute_features", lambda b, g: calls.append(g) or compute(b, g))
    with model.inference_cache():
        got = [run(model, batch), run(model, withheld), run(model, batch)]
        assert model._inference_cache
    assert model._inference_cache is None
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # per group, first pass: one call per subject; fmri withheld: nothing new for other groups
    groups = list(model.groups)
    assert sorted(set(calls)) == sorted(groups)
    assert len(calls) == sum(int(model.group_present(batch, g).sum()) for g in groups)
    calls.clear()
    run(model, batch)  # outside: computed again, batched (one call per group)
    assert len(calls) == len(groups)


def test_efficiency_report_per_stage_and_rotating_inference(model):
    report = model.efficiency_report(random_batch(model, n=2, seed=9, present="all"))
    stages = report["stages"]
    assert list(stages) == [s.name for s in model.stages()]
    for name, figures in stages.items():
        assert 0 < figures["parameters_trainable"] < report["parameters_total"]
        if name != "unimodal":  # LoRA + Q-former + head, far less than the encoders
            assert figures["parameters_trainable"] < stages["unimodal"]["parameters_trainable"] / 2
    rotating = report["rotating_inference"]
    assert rotating["rounds"] == 4
    assert rotating["flops_per_subject"] > max(s["flops_per_subject"] for s in stages.values())
    assert model.mode == "final"
