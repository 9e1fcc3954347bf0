"""predict, every modality-availability pattern, efficiency, the energy meter, the writers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from adfuse import evaluate
from adfuse.evaluate import (
    CODECARBON_METHOD,
    EnergyMeter,
    PredictionSet,
    availability_patterns,
    efficiency,
    evaluate_patterns,
    predict,
    write_evaluation,
)
from adfuse.prepare import collate

CLASSES = ["CN", "AD"]
MODALITIES = ["a", "b", "c"]
# availability of the 6 kinds of subject (a, b, c); each kind once with target 0 and once with 1
KINDS = [(1, 1, 1), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1)]


class OnlyA(nn.Module):
    """Uses modality a only: perfect when a is present, constant logits when it is absent.
    Refuses a sample with none of its modalities present (evaluate_patterns must exclude it)."""

    task_kind = "classification"
    modalities = MODALITIES

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(4.0))

    def forward(self, batch):
        present = torch.stack([batch.present[m] for m in self.modalities], dim=1)
        assert present.any(dim=1).all(), "a sample with no modality present reached the model"
        return batch.inputs["a"] * batch.present["a"][:, None] * self.scale


def items(kinds=KINDS, copies=2) -> list[dict]:
    out = []
    for copy in range(copies):
        for number, kind in enumerate(kinds):
            target = copy % 2
            present = dict(zip(MODALITIES, map(bool, kind), strict=True))
            signal = torch.tensor([1.0 - target, float(target)])
            inputs = {m: signal * present[m] for m in MODALITIES}
            out.append(
                {
                    "id": f"S{copy}{number}",
                    "inputs": inputs,
                    "present": present,
                    "target": torch.tensor(target),
                }
            )
    return out


# ----------------------------------------------------------------------------- predict
def test_predict_softmax_order_and_mode_restored():
    model = OnlyA()
    model.train()
    data = items()
    predictions = predict(model, data, batch_size=5, classes=CLASSES)
    assert model.training
    assert predictions.ids == [item["id"] for item in data]
    assert predictions.outputs.shape == (12, 2)
    assert np.allclose(predictions.outputs.sum(axis=1), 1.0)
    expected = torch.softmax(model(collate(data)).detach().double(), -1).numpy()
    assert np.allclose(predictions.outputs, expected)
    assert list(predictions.targets) == [item["target"].item() for item in data]


def test_predict_regression_and_sklearn_models():
    class Regressor(nn.Module):
        task_kind, modalities = "regression", ["a"]

        def forward(self, batch):
            return batch.inputs["a"].sum(dim=1, keepdim=True) * 2  # [B, 1]

    class Baseline:  # a scikit-learn baseline: predict(batch), no forward
        task_kind, modalities = "classification", ["a"]

        def predict(self, batch):
            return torch.tensor([[0.25, 0.75]] * len(batch))  # as adfuse's classical models

    batch = collate(items())
    regression = predict(Regressor(), batch)
    assert regression.outputs.shape == (12,)
    assert np.allclose(regression.outputs, batch.inputs["a"].sum(1).numpy() * 2)
    baseline = predict(Baseline(), [batch.select([0, 1]), batch.select([2])], classes=CLASSES)
    assert baseline.outputs.tolist() == [[0.25, 0.75]] * 3
    assert baseline.ids == batch.ids[:3]


# ----------------------------------------------------------------------------- patterns
def test_availability_patterns():
    assert availability_patterns(["a", "b", "c"]) == [
        ("a", "b", "c"),
        ("a", "b"),
        ("a", "c"),
        ("b", "c"),
        ("a",),
        ("b",),
        ("c",),
    ]
    assert len(availability_patterns(list("abcdef"))) == 2**6 - 1
    many = availability_patterns(list("abcdefgh"))
    assert len(many) == 1 + 8 + 8 and many[0] == tuple("abcdefgh")
    assert ("a",) in many and tuple("bcdefgh") in many


def test_evaluate_patterns_rows_counts_and_withheld_modality():
    table = evaluate_patterns(OnlyA(), items(), CLASSES, n_boot=200, seed=0)
    assert len(table) == 7
    assert table["pattern"].tolist() == ["a+b+c", "a+b", "a+c", "b+c", "a", "b", "c"]
    rows = table.set_index("pattern")
    for pattern, row in rows.iterrows():
        kept = pattern.split("+")
        expected = 2 * sum(any(kind[MODALITIES.index(m)] for m in kept) for kind in KINDS)
        assert row["n"] == expected, pattern
        assert row["n"] + row["n_excluded"] == 12
        assert row["n_modalities"] == len(kept)
    assert (rows.at["a", "n"], rows.at["b+c", "n"], rows.at["a+b+c", "n"]) == (6, 10, 12)
    assert rows.at["b+c", "withheld"] == "a" and rows.at["a+b+c", "withheld"] == "none"
    # only a carries the signal: perfect with a, chance when a is withheld
    assert rows.at["a", "balanced_accuracy"] == 1.0
    for pattern in ("b", "c", "b+c"):
        assert rows.at[pattern, "balanced_accuracy"] == 0.5, pattern
        assert rows.at[pattern, "auc"] == 0.5, pattern
    # with a kept, subjects who really lack a are still at chance
    assert 0.5 < rows.at["a+b+c", "balanced_accuracy"] < 1.0
    low, high = (
        rows.at["a+b+c", "balanced_accuracy_low"],
        rows.at["a+b+c", "balanced_accuracy_high"],
    )
    assert low <= rows.at["a+b+c", "balanced_accuracy"] <= high


def test_evaluate_patterns_runs_each_subject_once_per_distinct_input():
    """Patterns that leave a subject the same present modalities share its forward; the table
    equals the one of scoring every pattern on its own."""

    class Counting(OnlyA):
        def forward(self, batch):
            self.rows += len(batch)
            return super().forward(batch)

    model = Counting()
    model.rows = 0
    table = evaluate_patterns(model, items(), CLASSES, n_boot=200, seed=0)
    # per subject kind, the distinct non-empty (present & kept) sets: 2^(present count) - 1
    distinct = 2 * sum(2 ** sum(kind) - 1 for kind in KINDS)
    naive = int(table["n"].sum())
    assert model.rows == distinct == 32 and naive == 62  # one forward per row before

    # predict's outputs on the same subjects stand for each subject as it is
    model.rows = 0
    known = predict(OnlyA(), items(), classes=CLASSES)
    again = evaluate_patterns(model, items(), CLASSES, n_boot=200, seed=0, known=known)
    assert model.rows == distinct - len(known) == 20
    pd.testing.assert_frame_equal(again, table)

    batch = collate(items())
    for _, row in table.iterrows():
        kept = row["pattern"].split("+")
        has = torch.stack([batch.present[m] for m in kept], 1).any(1)
        chosen = batch.select(has.nonzero().flatten()).without(
            [m for m in MODALITIES if m not in kept]
        )
        alone = predict(OnlyA(), chosen, classes=CLASSES)
        expected = evaluate.bootstrap_ci(
            alone.targets,
            alone.outputs,
            evaluate.metric_function("classification", CLASSES),
            200,
            0,
            0.05,
        )
        assert row["n"] == len(alone)
        assert (row["auc"], row["auc_low"], row["auc_high"]) == pytest.approx(expected["auc"])


# ----------------------------------------------------------------------------- efficiency
class LinearModel(nn.Module):
    task_kind, modalities = "classification", ["a"]

    def __init__(self, width=10, n_classes=3):
        super().__init__()
        self.linear = nn.Linear(width, n_classes)

    def forward(self, batch):
        return self.linear(batch.inputs["a"])


def linear_batch(n=8, width=10):
    return collate(
        [
            {
                "id": str(i),
                "inputs": {"a": torch.randn(width)},
                "present": {"a": True},
                "target": torch.tensor(0),
            }
            for i in range(n)
        ]
    )


def test_efficiency_counts_linear_flops_and_parameters():
    model = LinearModel()
    model.linear.bias.requires_grad_(False)
    energy = {"kwh": 0.0, "kg_co2": 0.0, "method": "test", "seconds": 1.0}
    out = efficiency(model, linear_batch(), train_seconds=12.5, energy=energy)
    assert out["flops_per_subject"] == 2 * 10 * 3
    assert (out["parameters_total"], out["parameters_trainable"]) == (33, 30)
    assert out["inference_subjects_per_second"] > 0
    assert out["peak_memory_mb"] >= 0
    assert out["train_seconds"] == 12.5 and out["energy"] == energy
    assert json.dumps(out)  # plain data for efficiency.json


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="samples /proc (Linux)")
def test_efficiency_memory_is_the_inference_peak_even_below_an_earlier_one():
    class Hungry(LinearModel):
        def forward(self, batch):
            scratch = torch.ones(200 * 2**20 // 4)  # 200 MB live during the pass, then freed
            return super().forward(batch) + scratch[:1] * 0

    earlier = torch.ones(400 * 2**20 // 4)  # the process's all-time peak is higher already
    del earlier
    out = efficiency(Hungry(), linear_batch(), repeats=1)
    assert 150 < out["peak_memory_mb"] < 400, out["peak_memory_mb"]
    assert "statm" in out["peak_memory_method"]
    lean = efficiency(LinearModel(), linear_batch(), repeats=1)
    assert lean["peak_memory_mb"] < 50


# ----------------------------------------------------------------------------- energy
def busy():
    return sum(i * i for i in range(200_000))


def test_energy_meter_falls_back_without_codecarbon(monkeypatch):
    monkeypatch.setitem(sys.modules, "codecarbon", None)  # import fails
    with EnergyMeter() as meter:
        busy()
    result = meter.result
    assert set(result) == {"kwh", "kg_co2", "method", "seconds"}
    assert "fallback" in result["method"] and "not installed" in result["method"]
    assert result["kwh"] > 0 and result["kg_co2"] > 0 and result["seconds"] > 0


def test_energy_meter_falls_back_when_codecarbon_fails(monkeypatch):
    codecarbon = pytest.importorskip("codecarbon")

    class Broken:
        def __init__(self, **kwargs):
            raise RuntimeError("no CPU model")

    monkeypatch.setattr(codecarbon, "OfflineEmissionsTracker", Broken)
    with EnergyMeter() as meter:
        busy()
    assert "fallback" in meter.result["method"] and "no CPU model" in meter.result["method"]


def test_energy_meter_with_codecarbon_writes_nothing(tmp_path, monkeypatch):
    pytest.importorskip("codecarbon")
    monkeypatch.chdir(tmp_path)
    with EnergyMeter() as meter:
        busy()
    assert meter.result["method"] == CODECARBON_METHOD
    assert meter.result["kwh"] > 0 and meter.result["kg_co2"] > 0
    assert list(tmp_path.iterdir()) == []


def test_energy_meter_does_not_swallow_errors(monkeypatch):
    monkeypatch.setitem(sys.modules, "codecarbon", None)
    with pytest.raises(ValueError, match="training broke"), EnergyMeter() as meter:
        raise ValueError("training broke")
    assert meter.result is not None


# ----------------------------------------------------------------------------- writers
def test_write_evaluation_columns_and_json(tmp_path):
    predictions = PredictionSet(
        ["S1", "S2"],
        np.array([0, 1]),
        np.array([[0.9, 0.1], [0.3, 0.7]]),
        "classification",
        CLASSES,
    )
    metrics = {"auc": {"value": float("nan"), "low": float("nan"), "high": float("nan")}}
    patterns = evaluate_patterns(OnlyA(), items(), CLASSES, n_boot=20)
    written = write_evaluation(tmp_path, predictions, metrics, patterns)
    assert written["predictions"] == tmp_path / "predictions" / "test.csv"
    table = pd.read_csv(tmp_path / "predictions" / "test.csv")
    assert list(table.columns) == ["id", "target", "prob_CN", "prob_AD"]
    assert table["prob_AD"].tolist() == [0.1, 0.7]
    stored = json.loads((tmp_path / "metrics.json").read_text())
    assert stored == {"auc": {"value": None, "low": None, "high": None}}
    assert list(pd.read_csv(tmp_path / "patterns.csv").columns) == list(patterns.columns)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "metrics.json",
        "patterns.csv",
        "predictions",
    ]


def test_write_regression_predictions(tmp_path):
    predictions = PredictionSet(["S1"], np.array([1.5]), np.array([0.5]), "regression")
    evaluate.write_predictions(tmp_path, predictions)
    table = pd.read_csv(tmp_path / "predictions" / "test.csv")
    assert list(table.columns) == ["id", "target", "prediction"]
    assert table.iloc[0].tolist() == ["S1", 1.5, 0.5]
