"""ACMCA's mechanisms, each by a test that fails without it: the asymmetric cross-attention (who
asks whom, over which tokens), the learned stand-ins for absent modalities, FNet and transformer
in parallel and summed, every ablation switch, and the attention-map explainer end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from adfuse import models
from adfuse.data.cohort import ModalitySpec
from adfuse.errors import ConfigError
from adfuse.models.layers.cross_attention import CrossAttention
from adfuse.models.layers.fnet import FNetBlock, FourierMixing
from adfuse.prepare import Batch
from tests.models.conftest import PREPARE, make_spec, random_batch

SPEC = make_spec()
N_SLICE_TOKENS = 4  # 32x32 slices through the cpu ResNet (stride-2 stem, 3 stride-2 stages): 2x2


def build(seed: int = 0, task: str = "diagnosis", spec=SPEC, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.create("acmca", spec, task, prepare=PREPARE, **overrides).eval()


def run(model, batch: Batch) -> torch.Tensor:
    with torch.no_grad():
        return model(batch)


def weights(model, batch: Batch) -> dict[str, torch.Tensor]:
    """Every cross-attention's weights ``[B, heads, Q, K]`` for this batch."""
    run(model, batch)
    return {name: module.last_weights.clone() for name, module in model.cross.items()}


def with_input(batch: Batch, modality: str, value: torch.Tensor) -> Batch:
    return Batch({**batch.inputs, modality: value}, dict(batch.present), batch.target, batch.ids)


def with_absent(batch: Batch, modality: str, samples: list[int]) -> Batch:
    present = batch.present[modality].clone()
    present[samples] = False
    inputs = batch.inputs[modality].clone()
    inputs[samples] = 0
    return Batch(
        {**batch.inputs, modality: inputs},
        {**batch.present, modality: present},
        batch.target,
        batch.ids,
    )


def shared_weights(source, target) -> None:
    """Copy every parameter the two models share by name and shape (the ablations' common part)."""
    mine = target.state_dict()
    common = {
        k: v for k, v in source.state_dict().items() if k in mine and v.shape == mine[k].shape
    }
    target.load_state_dict(common, strict=False)


# ----------------------------------------------------------------------------- asymmetry
def test_clinical_asks_mri_and_genetics_asks_pet_never_the_reverse():
    model = build()
    assert model.roles == {
        "clinical": "clinical",
        "genetic": "genotype",
        "mri": "t1",
        "pet": "amyloid",
    }
    assert set(model.cross) == {"clinical_to_mri", "genetic_to_pet"}
    batch = random_batch(model, n=5, seed=1, present="all")
    found = weights(model, batch)
    heads = model.config.heads
    # [B, heads, n_clinical_queries, n_mri_tokens]: the image's spatial tokens are the keys
    assert found["clinical_to_mri"].shape == (5, heads, 1, N_SLICE_TOKENS)
    assert found["genetic_to_pet"].shape == (5, heads, 1, N_SLICE_TOKENS)
    more = build(query_tokens=3)
    assert weights(more, batch)["clinical_to_mri"].shape == (5, heads, 3, N_SLICE_TOKENS)


def test_pet_content_never_changes_clinical_to_mri_attention_and_mri_never_genetic_to_pet():
    model = build()
    batch = random_batch(model, n=4, seed=2, present="all")
    before = weights(model, batch)
    other_pet = weights(model, with_input(batch, "amyloid", torch.randn(4, 32, 32)))
    torch.testing.assert_close(
        other_pet["clinical_to_mri"], before["clinical_to_mri"], rtol=0, atol=0
    )
    assert not torch.allclose(other_pet["genetic_to_pet"], before["genetic_to_pet"])
    other_mri = weights(model, with_input(batch, "t1", torch.randn(4, 32, 32)))
    torch.testing.assert_close(
        other_mri["genetic_to_pet"], before["genetic_to_pet"], rtol=0, atol=0
    )
    assert not torch.allclose(other_mri["clinical_to_mri"], before["clinical_to_mri"])
    # the query side: clinical values steer the MRI attention, not the PET attention
    other_clinical = weights(
        model, with_input(batch, "clinical", torch.randn_like(batch.inputs["clinical"]))
    )
    assert not torch.allclose(other_clinical["clinical_to_mri"], before["clinical_to_mri"])
    torch.testing.assert_close(
        other_clinical["genetic_to_pet"], before["genetic_to_pet"], rtol=0, atol=0
    )


# ----------------------------------------------------------------------------- absent modalities
def test_an_absent_query_modality_is_replaced_by_the_learned_query():
    model = build()
    batch = with_absent(random_batch(model, n=4, seed=3, present="all"), "clinical", [1, 3])
    out = run(model, batch)
    noisy = batch.inputs["clinical"].clone()
    noisy[[1, 3]] = 50 * torch.randn_like(noisy[[1, 3]])
    torch.testing.assert_close(
        run(model, with_input(batch, "clinical", noisy)), out, rtol=0, atol=0
    )
    # the attention of samples 1 and 3 is the learned query's over their own MRI tokens
    found = weights(model, batch)["clinical_to_mri"]
    with torch.no_grad():
        mri = model.encoders["t1"](batch.inputs["t1"])
        model.cross["clinical_to_mri"](model.learned_query["clinical"].expand(4, -1, -1), mri)
    expected = model.cross["clinical_to_mri"].last_weights
    torch.testing.assert_close(found[[1, 3]], expected[[1, 3]])
    with torch.no_grad():
        model.learned_query["clinical"].add_(0.5)
    moved = run(model, batch)
    torch.testing.assert_close(moved[[0, 2]], out[[0, 2]], rtol=0, atol=0)
    assert not torch.allclose(moved[[1, 3]], out[[1, 3]])


def test_an_absent_image_branch_is_the_learned_absent_token_and_the_query_survives():
    model = build()
    batch = with_absent(random_batch(model, n=4, seed=4, present="all"), "t1", [0, 2])
    with torch.no_grad():
        queries = {r: model.query_tokens(batch, r) for r in ("clinical", "genetic")}
        images = {r: model.image_tokens(batch, r) for r in ("mri", "pet")}
        fused = model.cross_attend(queries, images)
    expected = queries["clinical"][[0, 2]] + model.absent["clinical_to_mri"]
    torch.testing.assert_close(fused[[0, 2], :1], expected, rtol=0, atol=0)
    out = run(model, batch)
    with torch.no_grad():
        model.absent["clinical_to_mri"].add_(0.5)
    moved = run(model, batch)
    torch.testing.assert_close(moved[[1, 3]], out[[1, 3]], rtol=0, atol=0)
    assert not torch.allclose(moved[[0, 2]], out[[0, 2]])
    # the clinical values still reach the output through the residual path
    changed = with_input(
        batch, "clinical", batch.inputs["clinical"] + torch.randn_like(batch.inputs["clinical"])
    )
    assert not torch.allclose(run(model, changed)[[0, 2]], out[[0, 2]])


def test_every_modality_absent_gives_one_learned_output():
    model = build()
    batch = random_batch(model, n=3, seed=5, present="all").without(model.modalities)
    out = run(model, batch)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1:], out[:1].expand(2, -1))


# ----------------------------------------------------------------------------- deep features
def test_fnet_and_transformer_run_in_parallel_and_are_summed():
    model = build()
    fused = torch.randn(3, 2, model.config.dim)
    with torch.no_grad():
        expected = model.fnet(fused) + model.transformer(fused)
        torch.testing.assert_close(model.deep_features(fused), expected)
    assert isinstance(model.fnet, FNetBlock)
    assert model.head[1].in_features == 2 * model.config.dim  # one token per asymmetric branch


@pytest.mark.parametrize("removed", ["fnet", "transformer"])
def test_removing_a_deep_branch_removes_its_parameters_and_changes_the_output(removed):
    full = build()
    ablated = build(**{removed: False})
    kind = {"fnet": (FNetBlock, FourierMixing), "transformer": torch.nn.TransformerEncoderLayer}
    assert not any(isinstance(m, kind[removed]) for m in ablated.modules())
    assert not any(name.startswith(f"{removed}.") for name, _ in ablated.named_parameters())
    shared_weights(full, ablated)
    kept = "transformer" if removed == "fnet" else "fnet"
    fused = torch.randn(3, 2, full.config.dim)
    with torch.no_grad():
        torch.testing.assert_close(ablated.deep_features(fused), getattr(full, kept)(fused))
    batch = random_batch(full, n=4, seed=6, present="all")
    assert not torch.allclose(run(ablated, batch), run(full, batch))


# ----------------------------------------------------------------------------- fusion ablations
def test_symmetric_adds_the_reverse_directions_and_keeps_the_paper_ones():
    paper = build()
    symmetric = build(fusion="symmetric")
    assert set(symmetric.cross) == {
        "clinical_to_mri",
        "genetic_to_pet",
        "mri_to_clinical",
        "pet_to_genetic",
    }
    shared_weights(paper, symmetric)
    batch = random_batch(paper, n=4, seed=7, present="all")
    found, reference = weights(symmetric, batch), weights(paper, batch)
    for name in ("clinical_to_mri", "genetic_to_pet"):
        torch.testing.assert_close(found[name], reference[name], rtol=0, atol=0)
    # the image tokens ask: Q = the MRI's spatial tokens, K = the clinical query token
    assert found["mri_to_clinical"].shape == (4, paper.config.heads, N_SLICE_TOKENS, 1)
    n_fused = 2 + 2 * N_SLICE_TOKENS
    assert symmetric.head[1].in_features == n_fused * paper.config.dim


def test_swapped_lets_the_image_tokens_ask_the_non_image_ones():
    model = build(fusion="swapped", query_tokens=2)
    assert set(model.cross) == {"mri_to_clinical", "pet_to_genetic"}
    batch = random_batch(model, n=4, seed=8, present="all")
    found = weights(model, batch)
    heads = model.config.heads
    assert found["mri_to_clinical"].shape == (4, heads, N_SLICE_TOKENS, 2)
    assert found["pet_to_genetic"].shape == (4, heads, N_SLICE_TOKENS, 2)
    other_pet = weights(model, with_input(batch, "amyloid", torch.randn(4, 32, 32)))
    torch.testing.assert_close(
        other_pet["mri_to_clinical"], found["mri_to_clinical"], rtol=0, atol=0
    )


def test_concat_has_no_cross_attention_and_fuses_the_four_pooled_embeddings():
    model = build(fusion="concat")
    assert not any(isinstance(m, CrossAttention) for m in model.modules())
    assert model.head[1].in_features == 4 * model.config.dim
    batch = random_batch(model, n=4, seed=9, present="all")
    with torch.no_grad():
        queries = {r: model.query_tokens(batch, r) for r in ("clinical", "genetic")}
        images = {r: model.image_tokens(batch, r) for r in ("mri", "pet")}
        fused = model.concatenate(queries, images)
    torch.testing.assert_close(fused[:, 2], images["mri"][0].mean(1))
    assert torch.isfinite(run(model, batch.without(["t1", "clinical"]))).all()


def test_volume3d_uses_3d_volumes_and_their_spatial_tokens():
    model = build(volume3d=True)
    assert model.views() == {"t1": "volume", "amyloid": "volume"}
    assert model.input_shape("t1") == tuple(PREPARE.volume_shape)
    grid = model.encoders["t1"].grid
    assert len(grid) == 3
    batch = random_batch(model, n=2, seed=10, present="all")
    found = weights(model, batch)
    assert found["clinical_to_mri"].shape[-1] == int(np.prod(grid)) > 1


# ----------------------------------------------------------------------------- modalities, presets
def test_pet_modality_chooses_the_pet_and_defaults_to_amyloid():
    spec = {**SPEC, "fdg": ModalitySpec("fdg", "volume", (20, 24, 20), SPEC["t1"].feature_names)}
    assert build(spec=spec).roles["pet"] == "amyloid"
    fdg = build(spec=spec, pet_modality="fdg")
    assert fdg.roles["pet"] == "fdg" and "amyloid" not in fdg.modalities
    only_fdg = models.create(
        "acmca", spec, "diagnosis", modalities=["clinical", "fdg"], prepare=PREPARE
    )
    assert only_fdg.roles == {"clinical": "clinical", "genetic": None, "mri": None, "pet": "fdg"}
    with pytest.raises(ConfigError, match="pet_modality 'tau'"):
        build(spec=spec, pet_modality="tau")


def test_a_run_without_some_roles_still_fuses_what_it_has():
    model = models.create(
        "acmca", SPEC, "diagnosis", modalities=["clinical", "t1"], prepare=PREPARE
    )
    assert set(model.cross) == {"clinical_to_mri"}
    batch = random_batch(model, n=3, seed=11)
    assert run(model.eval(), batch).shape == (3, 3)


def test_paper_preset_has_the_papers_sizes():
    model = models.create("acmca", SPEC, "diagnosis", preset="paper", prepare=PREPARE)
    assert model.config.dim == 100
    assert model.input_shape("t1") == (224, 224)
    assert model.encoders["t1"].grid == (7, 7)  # ResNet's 7x7 last feature map on 224x224
    assert model.head[1].in_features == 2 * 100
    linear_layers = [m for m in model.head if isinstance(m, torch.nn.Linear)]
    assert len(linear_layers) == 4


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from adfuse.synth import generate
    from adfuse.train import TrainConfig, fit

    root = tmp_path_factory.mktemp("acmca")
    dataset = generate(root / "dataset", n_subjects=80, seed=0)
    config = TrainConfig.build(model="acmca", epochs=2, n_boot=50)
    run_dir = fit(dataset, config, root / "run", cache_dir=root / "cache", progress=False)
    return dataset, run_dir, root / "cache"


def test_explain_writes_upsampled_attention_maps_and_a_figure_per_class(trained):
    from adfuse.explain import explain_run

    _, run_dir, cache = trained
    out = explain_run(run_dir, cache_dir=cache)
    subjects = pd.read_csv(out / "subjects.csv")
    split = json.loads((run_dir / "split.json").read_text())
    assert sorted(subjects["id"]) == sorted(split["test"])
    for role in ("mri", "pet"):
        maps = np.load(out / f"attention_{role}.npy")
        assert maps.shape == (len(subjects), 64, 64)  # the prepared slice, not the 4x4 grid
        has = subjects[f"has_{role}"].to_numpy(dtype=bool)
        assert np.isnan(maps[~has]).all()
        assert np.isfinite(maps[has]).all() and has.any()
        # bilinear upsampling of softmax weights over 16 cells: positive, mean 1/16 per subject
        assert (maps[has] > 0).all()
        np.testing.assert_allclose(maps[has].mean(axis=(1, 2)), 1 / 16, rtol=0.05)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["modalities"] == {"mri": "t1", "pet": "amyloid"}
    assert sum(summary["per_class"].values()) == len(subjects)
    for name, count in summary["per_class"].items():
        figure = out / f"attention_{name}.png"
        assert figure.exists() == (count > 0)
        if count:
            assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))


def test_cli_trains_acmca_for_diagnosis(trained, tmp_path):
    dataset, _, cache = trained
    command = [sys.executable, "-m", "adfuse.cli", "train", str(dataset), "--model", "acmca"]
    command += ["--task", "diagnosis", "--epochs", "1", "--out", str(tmp_path / "run")]
    command += ["--cache", str(cache)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    run_json = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run_json["model"] == "acmca" and run_json["status"] == "complete"
    assert Path(tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize(
    "named, real",
    [
        ({"symmetric": True}, {"fusion": "symmetric"}),
        ({"swapped": True}, {"fusion": "swapped"}),
        ({"concat": True}, {"fusion": "concat"}),
        ({"no_fnet": True}, {"fnet": False}),
        ({"no_transformer": "true"}, {"transformer": False}),
        ({"ablation": "no_fnet"}, {"fnet": False}),
        ({"ablation": ["no_fnet", "concat"]}, {"fnet": False, "fusion": "concat"}),
        ({"no_fnet": False}, {"fnet": True}),
    ],
)
def test_ablations_by_their_names(named, real):
    model = models.create("acmca", make_spec(), "diagnosis", prepare=PREPARE, **named)
    for key, value in real.items():
        assert getattr(model.config, key) == value
    assert "no_fnet" not in model.config.model_dump()  # stored under the real keys


def test_a_named_ablation_contradicting_a_value_or_unknown_is_refused():
    with pytest.raises(ConfigError, match="ablation 'no_fnet' sets fnet=False, not True"):
        models.create("acmca", make_spec(), "diagnosis", prepare=PREPARE, no_fnet=True, fnet=True)
    with pytest.raises(ConfigError, match="unknown ablation 'no_cake'"):
        models.create("acmca", make_spec(), "diagnosis", prepare=PREPARE, ablation="no_cake")
