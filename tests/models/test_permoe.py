"""PerM-MoE's mechanisms: per-modality routers, the bank conditioned on the present set, the
expert-specialization loss, baseline CDR-SB joined to the experts, and the ablation switches."""

from __future__ import annotations

import pytest
import torch

from adfuse import models
from adfuse.data.cohort import ModalitySpec
from adfuse.errors import ConfigError
from tests.models.conftest import PREPARE, make_spec, random_batch

SPEC = make_spec()
IMAGES = ["t1", "flair", "amyloid", "tau"]
SPEC.update({m: ModalitySpec(m, "volume", (20, 24, 20), SPEC["t1"].feature_names) for m in IMAGES})
CDRSB = SPEC["clinical"].feature_names.index("CDRSB")


def create(seed: int = 0, modalities=("clinical", *IMAGES), task="progression", **overrides):
    torch.manual_seed(seed)
    return models.create(
        "permoe", SPEC, task, prepare=PREPARE, modalities=list(modalities), **overrides
    )


def run(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(batch)


def test_one_router_per_image_modality_routes_its_own_tokens():
    model = create()
    assert model.images == IMAGES and model.moe.router.n_routers == 4
    batch = random_batch(model, n=3, seed=1, present="all")
    run(model, batch)
    before = model.moe.last_routing.indices.view(3, 4, model.n_tokens, -1).clone()
    with torch.no_grad():
        model.moe.router.weight[IMAGES.index("flair")].mul_(-1.0)  # flair's router only
    run(model, batch)
    after = model.moe.last_routing.indices.view(3, 4, model.n_tokens, -1)
    flair = IMAGES.index("flair")
    others = [i for i in range(4) if i != flair]
    assert torch.equal(after[:, others], before[:, others])
    assert not torch.equal(after[:, flair], before[:, flair])


def test_shared_router_ablation_routes_every_modality_with_one_router():
    model = create(shared_router=True)
    assert model.moe.router.n_routers == 1
    batch = random_batch(model, n=3, seed=2, present="all")
    run(model, batch)
    before = model.moe.last_routing.indices.clone()
    with torch.no_grad():
        model.moe.router.weight[0].mul_(-1.0)
    run(model, batch)
    changed = (model.moe.last_routing.indices != before).view(3, 4, -1).any(dim=(0, 2))
    assert changed.all()  # the one router decides for all four modalities


def test_the_bank_is_conditioned_on_the_present_set():
    model = create()
    batch = random_batch(model, n=2, seed=3, present="all")
    batch.present["tau"][:] = False  # both lack tau ...
    batch.present["flair"][1] = False  # ... with different present sets
    present = torch.stack([batch.present[m] for m in IMAGES], 1)
    combination = model.bank.combination(present)
    assert combination[0] != combination[1]
    encoded = torch.randn(2, 4, model.n_tokens, 32)
    filled = model.bank.fill(encoded, present)
    tau = IMAGES.index("tau")
    assert not torch.allclose(filled[0, tau], filled[1, tau])
    torch.testing.assert_close(filled[0, tau], model.bank.bank[combination[0], tau])
    assert model.bank.bank.requires_grad


@pytest.mark.parametrize("bank", ["zeros", "random"])
def test_bank_ablations_are_fixed_zeros_or_a_fixed_random_draw(bank):
    first, second = create(seed=0, bank=bank), create(seed=1, bank=bank)
    assert "bank.bank" not in dict(first.named_parameters())  # not learned
    torch.testing.assert_close(first.bank.bank, second.bank.bank)  # nor seed-dependent
    if bank == "zeros":
        assert first.bank.bank.abs().sum() == 0
    else:
        assert first.bank.bank.std() > 0.5
    batch = random_batch(first, n=2, seed=4, present="all").without(["amyloid"])
    present = torch.stack([batch.present[m] for m in IMAGES], 1)
    filled = first.bank.fill(torch.randn(2, 4, first.n_tokens, 32), present)
    row = first.bank.bank[first.bank.combination(present)]
    torch.testing.assert_close(filled[:, IMAGES.index("amyloid")], row[:, IMAGES.index("amyloid")])


def test_specialization_loss_targets_the_combination_expert_and_can_be_switched_off():
    model = create(specialization_weight=1.0)
    batch = random_batch(model, n=4, seed=5)
    model.train()
    torch.manual_seed(0)
    model.loss(batch, model(batch))
    terms = model.auxiliary_losses()
    assert set(terms) == {"specialization", "balance"}
    routing = model.moe.last_routing
    expert = (model._combination % 16).repeat_interleave(4 * model.n_tokens)
    expected = torch.nn.functional.cross_entropy(routing.logits, expert).item()
    assert terms["specialization"] == pytest.approx(expected, rel=1e-5)
    ablated = create(no_specialization=True)
    ablated.train()
    ablated.loss(batch, ablated(batch))
    assert set(ablated.auxiliary_losses()) == {"balance"}


def test_the_specialization_loss_trains_routing_toward_the_designated_expert():
    model = create(specialization_weight=1.0, dropout=0.0)
    batch = random_batch(model, n=4, seed=6)
    optimizer = torch.optim.Adam(model.moe.router.parameters(), lr=0.05)
    model.train()

    def chosen_share() -> float:
        run(model, batch)
        routing = model.moe.last_routing
        expert = (model._combination % 16).repeat_interleave(4 * model.n_tokens)
        return (routing.indices == expert[:, None]).any(dim=1).float().mean().item()

    before = chosen_share()
    for _ in range(30):
        model.train()
        optimizer.zero_grad()
        model(batch)
        model.router_losses(batch)["specialization"].backward()
        optimizer.step()
    assert chosen_share() > max(before, 0.9)


def test_baseline_cdrsb_is_the_only_clinical_input():
    model = create()
    batch = random_batch(model, n=3, seed=7, present="all")
    out = run(model, batch)
    others = batch.inputs["clinical"].clone()
    others[:, [i for i in range(others.shape[1]) if i != CDRSB]] += 5.0
    batch.inputs["clinical"] = others
    torch.testing.assert_close(run(model, batch), out, rtol=0, atol=0)
    batch.inputs["clinical"][:, CDRSB] += 1.0
    assert not torch.allclose(run(model, batch), out)


def test_without_any_image_the_prediction_comes_from_cdrsb():
    model = create()
    batch = random_batch(model, n=3, seed=8, present="all").without(IMAGES)
    out = run(model, batch)
    assert torch.isfinite(out).all()
    batch.inputs["clinical"][:, CDRSB] += 2.0
    assert not torch.allclose(run(model, batch), out)
    absent = batch.without(["clinical"])  # neither images nor CDR-SB: learned values
    assert torch.isfinite(run(model, absent)).all()


def test_a_clinical_only_run_is_an_mlp_on_cdrsb():
    model = create(modalities=["clinical"])
    assert model.moe is None and len(model.encoders) == 0
    batch = random_batch(model, n=4, seed=9)
    model.train()
    loss = model.loss(batch, model(batch))
    loss.backward()
    assert torch.isfinite(loss)
    assert model.auxiliary_losses() == {}


def test_permoe_classifies_and_names_a_missing_cdrsb_column():
    model = create(task="diagnosis")
    assert run(model, random_batch(model, n=2, seed=10)).shape == (2, 3)
    with pytest.raises(ConfigError, match="MOCA"):
        create(clinical_inputs=("MOCA",))
