"""Every registered torch model, present and future (timm's generic test), on a tiny synthetic spec.

A model that needs particular modalities gets the subset it accepts (``registry.choose_modalities``).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from adfuse import models
from adfuse.errors import ConfigError
from adfuse.models import registry
from adfuse.prepare import Batch
from tests.models.conftest import PREPARE, make_spec, random_batch, random_inputs

SPEC = make_spec()
TORCH_MODELS = models.available(kind="torch")
TASKS = ("diagnosis", "progression")
CASES = [pytest.param(n, t, id=f"{n}-{t}") for n in TORCH_MODELS for t in TASKS]
_BUILT: dict[tuple[str, str], torch.nn.Module] = {}


def build(name: str, task: str, seed: int = 0) -> torch.nn.Module:
    try:
        registry.choose_modalities(name, SPEC, None)
    except ConfigError as error:
        pytest.skip(f"{name} cannot be built on the test spec: {error}")
    torch.manual_seed(seed)
    return models.create(name, SPEC, task, prepare=PREPARE)


def cached(name: str, task: str) -> torch.nn.Module:
    """One model per (name, task) for the tests that do not change its weights."""
    if (name, task) not in _BUILT:
        _BUILT[name, task] = build(name, task)
    model = _BUILT[name, task]
    model.zero_grad(set_to_none=True)
    return model


def expected_shape(model, n: int) -> tuple[int, ...]:
    return (n, model.n_classes) if model.task_kind == "classification" else (n,)


def run_eval(model, batch: Batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(batch)


@pytest.mark.parametrize(("name", "task"), CASES)
def test_forward_shape(name, task):
    model = cached(name, task)
    out = run_eval(model, random_batch(model, n=4, seed=1))
    assert out.shape == expected_shape(model, 4)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("name", "task"), CASES)
def test_every_trainable_parameter_gets_a_gradient(name, task):
    model = cached(name, task)
    model.train()
    batch = random_batch(model, n=4, seed=2, present="all")
    out = model(batch)
    model.loss(batch, out).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    bad = [
        n for n, p in model.named_parameters() if p.grad is not None and not p.grad.isfinite().all()
    ]
    assert not bad, f"non-finite gradient for {bad[:5]}"


def with_noise_where_absent(model, batch: Batch, seed: int) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    inputs = {}
    for modality, x in batch.inputs.items():
        noise = random_inputs(model, modality, len(x), generator)
        if noise.is_floating_point():
            noise = noise * 3
        here = batch.present[modality].view(-1, *[1] * (x.dim() - 1))
        inputs[modality] = torch.where(here, x, noise.to(x.dtype))
    return Batch(inputs, dict(batch.present), batch.target, list(batch.ids))


@pytest.mark.parametrize(("name", "task"), CASES)
def test_mask_invariance(name, task):
    """The content of an absent modality never reaches the output (eval, and train with the same
    random draws: no batch statistic may see it either)."""
    model = cached(name, task)
    batch = random_batch(model, n=6, seed=3)
    noisy = with_noise_where_absent(model, batch, seed=4)
    torch.testing.assert_close(run_eval(model, noisy), run_eval(model, batch), rtol=0, atol=0)
    model.train()
    outputs = []
    for version in (batch, noisy):
        torch.manual_seed(5)
        with torch.no_grad():
            outputs.append(model(version))
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)


@pytest.mark.parametrize(("name", "task"), CASES)
def test_any_subset_of_modalities_absent(name, task):
    model = cached(name, task)
    batch = random_batch(model, n=3, seed=6, present="all")
    for size in range(1, len(model.modalities) + 1):
        for kept in itertools.combinations(model.modalities, size):
            out = run_eval(model, batch.without(set(model.modalities) - set(kept)))
            assert out.shape == expected_shape(model, 3), kept
            assert torch.isfinite(out).all(), f"non-finite output with only {kept}"


@pytest.mark.parametrize(("name", "task"), CASES)
def test_a_sample_does_not_depend_on_the_others(name, task):
    model = cached(name, task)
    batch = random_batch(model, n=5, seed=7)
    full = run_eval(model, batch)
    for order in ([2, 0], [4, 3, 1, 0, 2], [1]):
        part = run_eval(model, batch.select(order))
        torch.testing.assert_close(part, full[order], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("name", "task"), CASES)
def test_loss_is_a_finite_scalar_with_grad(name, task):
    model = cached(name, task)
    model.train()
    batch = random_batch(model, n=4, seed=8)
    loss = model.loss(batch, model(batch))
    assert loss.dim() == 0
    assert torch.isfinite(loss)
    assert loss.requires_grad


@pytest.mark.parametrize(("name", "task"), CASES)
def test_stages_name_existing_parameters(name, task):
    model = cached(name, task)
    stages = model.stages()
    assert stages
    names = [n for n, _ in model.named_parameters()]
    for stage in stages:
        for prefix in stage.trainable:
            assert any(n.startswith(prefix) for n in names), f"{stage.name}: {prefix!r}"
        assert any(stage.applies_to(n) for n in names), f"stage {stage.name} trains nothing"


@pytest.mark.parametrize(("name", "task"), CASES)
def test_efficiency_counts_flops_and_times_inference(name, task):
    """What the engine measures after training (efficiency.json) works for every model and
    leaves the parameters' trainable flags as they were."""
    from adfuse.evaluate import efficiency

    model = cached(name, task)
    flags = [p.requires_grad for p in model.parameters()]
    result = efficiency(model, random_batch(model, n=2, seed=3), train_seconds=1.0, repeats=1)
    assert result["flops_per_subject"] > 0
    assert result["inference_subjects_per_second"] > 0
    assert result["parameters_total"] >= result["parameters_trainable"] > 0
    assert [p.requires_grad for p in model.parameters()] == flags


@pytest.mark.parametrize(("name", "task"), CASES)
def test_safetensors_round_trip(name, task, tmp_path):
    from safetensors.torch import load_model, save_model

    model = build(name, task, seed=0)
    batch = random_batch(model, n=4, seed=9)
    model.train()  # one step, so the saved state is not the initial one (weights, BN statistics)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    model.loss(batch, model(batch)).backward()
    optimizer.step()
    save_model(model, str(tmp_path / "model.safetensors"))
    fresh = build(name, task, seed=0)
    load_model(fresh, str(tmp_path / "model.safetensors"), strict=True)
    torch.testing.assert_close(run_eval(fresh, batch), run_eval(model, batch), rtol=0, atol=0)


# ----------------------------------------------------------------------------- the baselines' own rules
def test_unimodal_uses_one_modality_and_a_constant_when_it_is_absent():
    model = build("unimodal", "diagnosis")
    assert model.modalities == ["clinical"]
    chosen = models.create("unimodal", SPEC, "diagnosis", prepare=PREPARE, modality="genotype")
    assert chosen.modalities == ["genotype"]
    batch = random_batch(model, n=4, seed=10, present="all").without(["clinical"])
    out = run_eval(model, batch)
    torch.testing.assert_close(out, model.absent_output.detach().expand(4, -1))


def test_late_fusion_averages_the_heads_of_present_modalities():
    torch.manual_seed(0)
    pair = ["clinical", "genotype"]
    model = models.create("late_fusion", SPEC, "progression", prepare=PREPARE, modalities=pair)
    batch = random_batch(model, n=4, seed=11, present="all")
    batch.present["clinical"] = torch.tensor([True, True, False, False])
    batch.present["genotype"] = torch.tensor([True, False, True, False])
    out = run_eval(model, batch)
    with torch.no_grad():
        head = {m: model.heads[m](model.encoders[m](batch.inputs[m]).mean(1))[:, 0] for m in pair}
        expected = torch.stack(
            [
                (head["clinical"][0] + head["genotype"][0]) / 2,
                head["clinical"][1],
                head["genotype"][2],
                model.absent_output[0],
            ]
        )
    torch.testing.assert_close(out, expected)


def test_early_fusion_fills_an_absent_slot_with_its_learned_vector():
    model = build("early_fusion", "diagnosis")
    batch = random_batch(model, n=4, seed=12, present="all")
    batch.present["t1"] = torch.tensor([True, False, True, False])
    before = run_eval(model, batch)
    with torch.no_grad():
        model.absent["t1"].add_(1.0)
    after = run_eval(model, batch)
    torch.testing.assert_close(after[[0, 2]], before[[0, 2]], rtol=0, atol=0)
    assert not torch.allclose(after[[1, 3]], before[[1, 3]])
