"""The engine's curriculum hook: each epoch presents the training subjects in the order the model's
``epoch_order(epoch, present, shuffled)`` returns (Flex-MoE sorts its first epochs by modality count)."""

from __future__ import annotations

from adfuse import splits
from adfuse.models.baselines import Unimodal
from adfuse.train import TrainConfig, fit
from tests.unit.cohort_factory import sized_cohort


def test_the_engine_presents_subjects_in_the_models_order(tmp_path, monkeypatch):
    cohort = sized_cohort(tmp_path / "data", {"CN": 10, "MCI": 10, "AD": 10})
    calls, seen = [], []
    original_loss = Unimodal.loss

    def reversed_order(self, epoch, present, shuffled):
        calls.append((epoch, sorted(present), shuffled.clone()))
        return shuffled.flip(0)

    def recording_loss(self, batch, out):
        if self.training:
            seen.append(list(batch.ids))
        return original_loss(self, batch, out)

    monkeypatch.setattr(Unimodal, "epoch_order", reversed_order)
    monkeypatch.setattr(Unimodal, "loss", recording_loss)
    config = TrainConfig.build(
        model="unimodal", modalities=["clinical"], epochs=2, batch_size=4, n_boot=10
    )
    run = fit(cohort.root, config, tmp_path / "run", cache_dir=tmp_path / "cache", progress=False)
    assert [(epoch, names) for epoch, names, _ in calls] == [(0, ["clinical"]), (1, ["clinical"])]
    train = splits.Split.load(run / "split.json").train
    assert len(train) % 4 != 1  # no batch of one is skipped, so every subject is presented
    presented = [ptid for ids in seen for ptid in ids]
    expected = [train[i] for _, _, shuffled in calls for i in shuffled.flip(0).tolist()]
    assert presented == expected
