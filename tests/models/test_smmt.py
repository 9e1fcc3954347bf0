"""SMMT's own mechanisms: encoders (patch tokens, MLP, embedding lookup), cluster self-attention in
the model, the cascade of cross-attention, modality-wise masking, and the ablation switches."""

from __future__ import annotations

import math

import pytest
import torch

from adfuse import models
from adfuse.models.layers import cluster_attention
from adfuse.models.smmt import PAPER_TRAINING, ModalityMasking, TabularEncoder
from adfuse.train import TrainConfig
from tests.models.conftest import PREPARE, make_spec, random_batch

SPEC = make_spec()


def create(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.create("smmt", SPEC, "diagnosis", prepare=PREPARE, **overrides)


def run(model, batch, train: bool = False, seed: int = 0) -> torch.Tensor:
    model.train(train)
    torch.manual_seed(seed)
    with torch.no_grad():
        return model(batch)


# ----------------------------------------------------------------------------- encoders
def test_images_give_patch_tokens_and_scores_an_mlp():
    model = create()
    assert "notes" not in model.modalities
    assert model.views()["t1"] == "slice"
    assert model.encoders["t1"].n_tokens > 1  # CNN feature-map cells
    genotype = model.encoders["genotype"]
    assert isinstance(genotype, TabularEncoder) and genotype.categories is None
    assert genotype.n_tokens == model.config.vector_tokens


def test_categorical_fields_are_an_embedding_lookup():
    encoder = create().encoders["clinical"].eval()
    assert encoder.n_numeric == 8 and encoder.fields == [2]  # PTGENDER: Female, Male
    assert encoder.categories.num_embeddings == 3  # row 0: missing or unseen
    x = torch.randn(3, 10)
    x[:, 8:] = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    tokens = encoder(x)
    assert tokens.shape == (3, encoder.n_tokens, 32)
    rows = encoder.categories.weight[[1, 2, 0]]
    torch.testing.assert_close(tokens[:, -1], rows)
    changed = x.clone()
    changed[:, :8] += 1.0  # scores move the MLP tokens only
    torch.testing.assert_close(encoder(changed)[:, -1], rows)
    assert not torch.allclose(encoder(changed)[:, :-1], tokens[:, :-1])


# ----------------------------------------------------------------------------- sparse self-attention
def self_attention_layers(model):
    return [block.attention for blocks in model.self_attention.values() for block in blocks]


def test_self_attention_clusters_the_tokens_of_each_modality():
    model = create()
    batch = random_batch(model, n=4, seed=1, present="all")
    run(model, batch)
    for layer in self_attention_layers(model):
        assert layer.last_path == "cluster"
        n = layer.last_clusters.shape[1]
        assert int(layer.last_clusters.max()) < max(math.ceil(math.log2(n)), 1)


def test_dense_ablation_never_clusters_and_one_cluster_equals_it(monkeypatch):
    sparse = create()
    dense = create(attention="dense")
    dense.load_state_dict(sparse.state_dict())  # the same parameters: only the attention differs
    batch = random_batch(sparse, n=6, seed=2, present="all")
    calls = []
    original = cluster_attention.kmeans_clusters
    monkeypatch.setattr(
        cluster_attention, "kmeans_clusters", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    dense_out = run(dense, batch)
    assert not calls
    assert all(layer.last_path == "dense" for layer in self_attention_layers(dense))
    sparse_out = run(sparse, batch)
    assert len(calls) == len(sparse.modalities)
    assert not torch.allclose(sparse_out, dense_out, atol=1e-4)
    single = create(n_clusters=1)
    single.load_state_dict(sparse.state_dict())
    torch.testing.assert_close(run(single, batch), dense_out, rtol=1e-4, atol=1e-5)


def test_crossover_none_uses_the_measured_constant():
    model = create(crossover=None)
    assert all(
        layer.crossover == cluster_attention.CROSSOVER for layer in self_attention_layers(model)
    )
    run(model, random_batch(model, n=2, seed=3, present="all"))  # short sequences: dense
    assert all(layer.last_path == "dense" for layer in self_attention_layers(model))


# ----------------------------------------------------------------------------- cascade
def test_each_modality_attends_to_the_fused_sequence_of_the_previous_ones():
    model = create().eval()
    batch = random_batch(model, n=5, seed=4)
    seen = []
    for modality, block in model.fusion.items():
        block.register_forward_hook(
            lambda module, args, out, m=modality: seen.append((m, args[1].shape[1], args[2]))
        )
    with torch.no_grad():
        tokens = [model.encode(batch, i) for i in range(len(model.modalities))]
        model(batch)
    counts = [t.shape[1] for t in tokens]
    assert [m for m, _, _ in seen] == model.modalities[1:]
    for i, (_, keys, key_mask) in enumerate(seen, start=1):
        assert keys == sum(counts[:i])  # everything fused so far
        expected = torch.cat(
            [
                batch.present[m][:, None].expand(-1, c)
                for m, c in zip(model.modalities, counts, strict=True)
            ],
            dim=1,
        )[:, :keys]
        assert torch.equal(key_mask, expected)  # absent modalities' tokens are never attended


def test_the_cascade_flows_forward_only():
    model = create().eval()
    batch = random_batch(model, n=3, seed=5, present="all")
    present = [batch.present[m] for m in model.modalities]
    with torch.no_grad():
        tokens = [model.encode(batch, i) for i in range(len(model.modalities))]
        fused = model.fuse(tokens, present)
        changed = [t.clone() for t in tokens]
        changed[0] += torch.randn_like(changed[0])  # the first modality changes
        refused = model.fuse(changed, present)
    assert all(not torch.allclose(a, b) for a, b in zip(fused[1:], refused[1:], strict=True))
    changed = [t.clone() for t in tokens]
    changed[-1] += torch.randn_like(changed[-1])  # the last changes: nothing before it moves
    with torch.no_grad():
        refused = model.fuse(changed, present)
    for a, b in zip(fused[:-1], refused[:-1], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ----------------------------------------------------------------------------- masking
@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_masking_zeroes_a_ratio_r_in_training_and_nothing_in_eval(ratio):
    masking = ModalityMasking(ratio)
    x = torch.rand(64, 5, 64) + 0.5
    torch.testing.assert_close(masking.eval()(x), x, rtol=0, atol=0)
    masked = masking.train()(x)
    zeros = (masked == 0).float().mean().item()
    assert abs(zeros - ratio) < 0.02
    kept = masked != 0
    torch.testing.assert_close(masked[kept], x[kept], rtol=0, atol=0)  # x ⊙ m, no rescaling


def test_masking_acts_in_the_model_and_no_mask_turns_it_off():
    assert create().masking.ratio == 0.3
    assert create(mask_ratio=0.6).masking.ratio == 0.6
    masked = create(dropout=0.0)
    batch = random_batch(masked, n=4, seed=6, present="all")
    assert not torch.allclose(run(masked, batch, True, seed=1), run(masked, batch, True, seed=2))
    plain = create(dropout=0.0, masking=False)
    assert plain.masking.ratio == 0.0
    torch.testing.assert_close(run(plain, batch, True, seed=1), run(plain, batch, True, seed=2))
    torch.testing.assert_close(run(masked, batch), run(masked, batch))  # eval: deterministic


def test_paper_preset_and_training_settings():
    config = models.make_config("smmt", "paper")
    assert (config.dim, config.mask_ratio, config.attention, config.crossover) == (
        512,
        0.3,
        "cluster",
        0,
    )
    train = TrainConfig.build(model="smmt", preset="paper", **PAPER_TRAINING)
    assert (train.lr, train.batch_size, train.epochs, train.weight_decay) == (1e-3, 8, 50, 0.0)


def test_ablations_by_their_names():
    from adfuse import models
    from tests.models.conftest import PREPARE, make_spec

    dense = models.create("smmt", make_spec(), "diagnosis", prepare=PREPARE, dense=True)
    unmasked = models.create("smmt", make_spec(), "diagnosis", prepare=PREPARE, ablation="no_mask")
    assert dense.config.attention == "dense" and dense.config.masking
    assert unmasked.config.masking is False and unmasked.config.attention == "cluster"
