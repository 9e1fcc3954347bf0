"""3MT (our reading): learned queries visit the modalities in a cascade, an absent modality leaves
them unchanged, modality dropout in training, and auxiliary heads whose losses are in ``loss()``."""

from __future__ import annotations

import itertools

import torch

from adfuse import models
from tests.models.conftest import PREPARE, make_spec, random_batch

SPEC = make_spec()
PAIR = ["clinical", "genotype", "fmri"]  # no volumes: fast


def create(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return models.create("3mt", SPEC, "diagnosis", prepare=PREPARE, modalities=PAIR, **overrides)


def test_queries_visit_the_modalities_in_order():
    model = create().eval()
    batch = random_batch(model, n=4, seed=1, present="all")
    calls = []
    for modality, step in model.steps.items():
        step.register_forward_hook(
            lambda module, args, out, m=modality: calls.append((m, args[0], out))
        )
    with torch.no_grad():
        states = model.cascade(batch)
    assert [m for m, _, _ in calls] == model.modalities
    torch.testing.assert_close(calls[0][1], model.queries.expand(4, -1, -1))
    for (_, _, before), (_, after_input, _) in itertools.pairwise(calls):
        assert after_input is before  # each step starts from the previous step's queries
    assert len(states) == len(model.modalities) + 1
    for state in states[1:]:
        assert not torch.allclose(state, states[0])


def test_an_absent_modality_leaves_the_queries_unchanged():
    model = create().eval()
    batch = random_batch(model, n=6, seed=2)
    with torch.no_grad():
        states = model.cascade(batch)
    for i, modality in enumerate(model.modalities):
        here = batch.present[modality]
        assert here.any() and (~here).any()
        torch.testing.assert_close(states[i + 1][~here], states[i][~here], rtol=0, atol=0)
        assert not torch.allclose(states[i + 1][here], states[i][here])


def test_auxiliary_losses_are_in_loss_and_reported():
    model = create(aux_weight=0.5, modality_dropout=0.0)
    model.train()
    batch = random_batch(model, n=6, seed=3)
    batch.present["fmri"] = torch.zeros(6, dtype=torch.bool)  # no sample has it: no fmri term
    out = model(batch)
    loss = model.loss(batch, out)
    aux = model.auxiliary_losses()
    assert set(aux) == {"clinical", "genotype"}
    expected = model.task_loss(batch, out).item() + 0.5 * sum(aux.values())
    assert abs(loss.item() - expected) < 1e-5
    model.zero_grad()
    loss.backward()
    assert all(p.grad is not None for p in model.aux_heads["clinical"].parameters())
    assert all(p.grad is None for p in model.aux_heads["fmri"].parameters())
    silent = create(aux_weight=0.0, modality_dropout=0.0).train()
    out = silent(batch)
    assert abs(silent.loss(batch, out).item() - silent.task_loss(batch, out).item()) < 1e-6


def test_an_auxiliary_loss_only_counts_samples_with_its_modality():
    model = create(modality_dropout=0.0).eval()
    batch = random_batch(model, n=6, seed=4)
    with torch.no_grad():
        out = model(batch)
        model.loss(batch, out)
        here = batch.present["clinical"]
        aux_out = model.aux_heads["clinical"](model.cascade(batch)[1].mean(1))[here]
        expected = torch.nn.functional.cross_entropy(aux_out, batch.target[here]).item()
    assert abs(model.auxiliary_losses()["clinical"] - expected) < 1e-5


def test_modality_dropout_withholds_modalities_in_training_only():
    model = create(modality_dropout=0.5)
    batch = random_batch(model, n=16, seed=5, present="all")
    model.train()
    torch.manual_seed(0)
    model(batch)
    seen = torch.stack([model.auxiliary_outputs[m][1] for m in model.modalities], dim=1)
    assert (~seen).any() and seen.any(dim=1).all()  # some withheld, never all of a sample's
    model.eval()
    model(batch)
    assert all(model.auxiliary_outputs[m][1].all() for m in model.modalities)
