"""Flex-MoE's mechanisms (tokens, bank, shared router, router loss, sorted warm-up) and the absence
of each known defect of the public code (module docstring of adfuse/models/flexmoe.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from adfuse import models, splits, tasks
from adfuse.models.flexmoe import combination_table, modality_combinations
from adfuse.prepare import TabularScaler
from adfuse.train import TrainConfig, open_session
from tests.models.conftest import PREPARE, make_spec, random_batch
from tests.unit.cohort_factory import sized_cohort

SPEC = make_spec()
MODALITIES = ["clinical", "genotype", "t1", "amyloid"]


def create(seed: int = 0, modalities=MODALITIES, task: str = "progression", **overrides):
    torch.manual_seed(seed)
    return models.create("flexmoe", SPEC, task, prepare=PREPARE, modalities=modalities, **overrides)


def run(model, batch, train: bool = False, seed: int = 0) -> torch.Tensor:
    model.train(train)
    torch.manual_seed(seed)
    with torch.no_grad():
        return model(batch)


# ----------------------------------------------------------------------------- mechanisms
def test_every_modality_becomes_patches_tokens_of_width_dim():
    model = create()
    batch = random_batch(model, n=3, seed=1, present="all")
    for modality in MODALITIES:
        tokens = model.encoders[modality](batch.inputs[modality])
        assert tokens.shape == (3, 16, 32)
    assert model.encoders["t1"].backbone is not None  # image: a 3D CNN to one vector first
    assert model.encoders["clinical"].backbone is None
    assert model.moe.router.n_routers == 1 and model.moe.n_experts == 16
    assert model.moe.top_k == 4
    assert model.position.shape == (len(MODALITIES) * 16, 32)


def test_combinations_are_numbered_all_first_and_empty_last():
    combos = modality_combinations(3)
    assert len(combos) == 8 and combos[0] == (0, 1, 2) and combos[-1] == ()
    table = combination_table(3)
    assert table[0b111].item() == 0 and table[0].item() == 7
    assert sorted(table.tolist()) == list(range(8))


def test_the_bank_fills_absent_tokens_from_the_row_of_the_observed_combination():
    model = create()
    batch = random_batch(model, n=4, seed=2, present="all")
    batch.present["t1"] = torch.tensor([True, False, True, False])
    batch.present["genotype"] = torch.tensor([True, True, False, False])
    tokens, present = model.tokens(batch)
    combination = model.bank.combination(present)
    for sample in range(4):
        for position in range(len(MODALITIES)):
            if not present[sample, position]:
                expected = model.bank.bank[combination[sample], position]
                torch.testing.assert_close(tokens[sample, position], expected)
    # changing one combination's row changes exactly the subjects with that combination
    before = run(model, batch)
    with torch.no_grad():
        model.bank.bank[combination[1]] += 1.0
    after = run(model, batch)
    changed = ~torch.isclose(after, before)
    assert changed.tolist() == (combination == combination[1]).tolist()


def test_router_loss_pushes_incomplete_subjects_to_their_combination_expert():
    model = create(router_weight=1.0)
    batch = random_batch(model, n=4, seed=3, present="all")
    batch.present["amyloid"] = torch.tensor([True, True, False, False])
    model.train()
    model.loss(batch, model(batch))
    terms = model.auxiliary_losses()
    assert set(terms) == {"router_expert", "router_balance"}
    combination = model._combination
    expert = combination % 16
    routing = model.moe.last_routing
    logits = routing.logits.view(4, -1, 16)
    incomplete = combination != 0
    expected = torch.nn.functional.cross_entropy(
        logits[incomplete].reshape(-1, 16),
        expert[incomplete].repeat_interleave(logits.shape[1]),
    )
    assert terms["router_expert"] == pytest.approx(expected.item(), rel=1e-5)


def test_first_epochs_present_subjects_with_more_modalities_first():
    model = create()
    present = {
        "clinical": torch.tensor([True, True, True, True, True]),
        "genotype": torch.tensor([False, True, False, True, True]),
        "t1": torch.tensor([False, True, True, False, True]),
        "amyloid": torch.tensor([False, False, False, False, True]),
    }
    shuffled = torch.tensor([3, 0, 4, 2, 1])
    order = model.epoch_order(0, present, shuffled)
    assert order.tolist() == [4, 1, 3, 2, 0]  # 4 modalities, 3, then 2 (3 before 2 as shuffled), 1
    assert model.epoch_order(4, present, shuffled).tolist() == order.tolist()
    assert model.epoch_order(5, present, shuffled).tolist() == shuffled.tolist()


# ----------------------------------------------------------------------------- known defects
def test_a_subject_with_none_of_the_modalities_trains_and_predicts():
    model = create()
    batch = random_batch(model, n=3, seed=4, present="all").without(MODALITIES)
    batch.present["t1"][0] = True  # one subject with something, two with nothing
    model.train()
    out = model(batch)
    loss = model.loss(batch, out)
    assert torch.isfinite(loss)
    loss.backward()
    assert model.bank.combination(torch.zeros(1, 4, dtype=torch.bool)).item() == 15
    assert model.bank.bank.grad[15].abs().sum() > 0  # the empty combination's row is learned


def test_a_single_modality_run_has_a_bank_and_trains():
    model = create(modalities=["clinical"])
    assert model.bank.bank.shape == (2, 1, 16, 32)
    batch = random_batch(model, n=4, seed=5)
    model.train()
    loss = model.loss(batch, model(batch))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(run(model, batch)).all()


def test_the_attention_output_is_added_to_its_input():
    """With attention and experts silenced the layer is the identity (residual paths); the public
    code's ``x = x + dropout(x)`` on the attention output would give zeros here."""
    model = create().eval()
    with torch.no_grad():
        model.attention.out.weight.zero_()
        model.attention.out.bias.zero_()
        model.moe.experts.w2.zero_()
        model.moe.experts.b2.zero_()
    x = torch.randn(2, len(MODALITIES) * 16, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.mix(x), x)


def test_statistics_are_fitted_on_the_training_split_only(tmp_path):
    cohort = sized_cohort(tmp_path / "data", {"CN": 12, "MCI": 12, "AD": 12})
    config = TrainConfig.build(model="flexmoe", task="progression", modalities=["clinical"])
    session = open_session(cohort.root, config, tmp_path / "run", tmp_path / "cache")
    fitted = session.preprocessor.fitted_on()["clinical scaler"]
    assert set(fitted) <= set(session.split.train) and fitted
    splits.check_disjoint(session.split, session.preprocessor.fitted_on())
    scaler = session.preprocessor.scalers["clinical"]
    values = cohort.clinical_values(session.split.train)[cohort.clinical_numeric]
    np.testing.assert_allclose(scaler.mean, values.mean().to_numpy(dtype=float), rtol=1e-9)


def test_each_column_is_filled_with_its_own_training_mean():
    train = np.array([[1.0, 10.0, 100.0], [3.0, 30.0, np.nan], [5.0, np.nan, 300.0]])
    scaler = TabularScaler(["a", "b", "c"], {}).fit(train, ["s1", "s2", "s3"])
    np.testing.assert_allclose(scaler.mean, [3.0, 20.0, 200.0])
    filled = scaler.transform(np.full((1, 3), np.nan), [[]])
    np.testing.assert_array_equal(filled, np.zeros((1, 3)))  # z = 0: each column's own mean
    first_column_fill = (3.0 - scaler.mean) / scaler.scale
    assert not np.allclose(filled[0], first_column_fill)


ORDER_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from adfuse import load_cohort, models, splits, tasks
    from adfuse.prepare import dataset
    cohort = load_cohort(sys.argv[1])
    task = tasks.get("progression")
    split = splits.subject_split(cohort, task, seed=3)
    model = models.create("flexmoe", cohort.spec, task, modalities=["clinical"])
    train = dataset(cohort, task, ["clinical"], split, "train", cache_dir=sys.argv[2]).batch()
    shuffled = torch.randperm(len(train), generator=torch.Generator().manual_seed(7))
    order = model.epoch_order(0, train.present, shuffled).tolist()
    print(json.dumps({"train": split.train, "test": split.test, "first": [train.ids[i] for i in order]}))
    """
)


def test_subject_order_does_not_depend_on_the_hash_seed(tmp_path):
    cohort = sized_cohort(tmp_path / "data", {"CN": 10, "MCI": 10, "AD": 10})
    results = []
    for hash_seed in ("1", "12345"):
        environment = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(
            [sys.executable, "-c", ORDER_SCRIPT, str(cohort.root), str(tmp_path / "cache")],
            capture_output=True,
            text=True,
            env=environment,
            check=True,
        )
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert results[0] == results[1]
    assert len(results[0]["first"]) == len(results[0]["train"])


def test_evaluation_router_loss_never_reaches_training_loss_or_logs():
    model = create(router_weight=1.0)
    train_batch = random_batch(model, n=4, seed=6)
    other = random_batch(model, n=6, seed=7)

    def training_loss() -> float:
        model.train()
        torch.manual_seed(0)
        return model.loss(train_batch, model(train_batch)).item()

    first = training_loss()
    logged = model.auxiliary_losses()
    model.eval()
    with torch.no_grad():
        evaluation = model.loss(other, model(other))
    assert evaluation.item() == model.task_loss(other, model(other)).item()  # task loss only
    assert model.auxiliary_losses() == {}  # nothing logged by evaluation
    assert training_loss() == first  # no evaluation term carried into the next step
    assert model.auxiliary_losses() == logged


def test_flexmoe_also_classifies():
    model = create(task="diagnosis")
    out = run(model, random_batch(model, n=3, seed=8))
    assert out.shape == (3, 3)
    assert tasks.get("diagnosis").classes == ("CN", "MCI", "AD")
