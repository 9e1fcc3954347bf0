"""A run interrupted after epoch k and resumed equals an uninterrupted one bit for bit, in process.

The interruption is an exception raised right after an epoch's history is written (what a kill
between two epochs leaves: checkpoints and state of that epoch). Models chosen for what could
break exactness: early fusion with fMRI and T1, SMMT's random token masking, 3MT's random modality
dropout, and the anchored model's per-round feature cache (a multi-stage model interrupted inside
a round). A resume under another torch thread count must still give the uninterrupted run's bits.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from adfuse import train
from tests.reliability.helpers import imaged_cohort

TINY_ANCHORED = {"width": 16, "depth": 1, "heads": 2, "queries": 2}
CASES = {
    "early_fusion": (["clinical", "t1", "fmri"], 3, 1, {}),
    "smmt": (["clinical", "t1", "fmri"], 3, 1, {}),
    "3mt": (["clinical", "t1", "fmri"], 3, 1, {}),
    # 2 epochs per stage: phase 1, then the smri round is interrupted after its first epoch
    "anchored": (["t1", "fmri"], 2, 3, TINY_ANCHORED),
}


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return imaged_cohort(tmp_path_factory.mktemp("imaged") / "cohort")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config_of(model: str) -> train.TrainConfig:
    modalities, epochs, _, overrides = CASES[model]
    return train.TrainConfig(
        model=model,
        modalities=modalities,
        epochs=epochs,
        batch_size=8,
        seed=5,
        patience=100,
        n_boot=20,
        patterns=False,
        overrides=overrides,
    )


def interrupted_then_resumed(cohort, config, out: Path, after: int, monkeypatch, threads=None):
    """Train into ``out``, stopped once ``after`` epochs are done; then resume (with ``threads``
    torch threads when given)."""
    write_history, written = train._write_history, []

    def write_then_stop(folder, history):
        write_history(folder, history)
        written.append(len(history))
        if len(written) == after:
            raise Interrupted

    with monkeypatch.context() as patch:
        patch.setattr(train, "_write_history", write_then_stop)
        with pytest.raises(Interrupted):
            train.fit(cohort, config, out, cache_dir=out.parent / "cache", progress=False)
    assert (out / "checkpoints" / "last_state.pt").is_file() and not (out / "metrics.json").exists()
    if threads:
        torch.set_num_threads(threads)
    train.fit(cohort, config, out, resume=True, cache_dir=out.parent / "cache", progress=False)


def assert_identical_runs(whole: Path, resumed: Path) -> None:
    from safetensors.torch import load_file

    for name in ("best.safetensors", "last.safetensors"):
        a, b = (load_file(run / "checkpoints" / name) for run in (whole, resumed))
        assert a.keys() == b.keys()
        different = [key for key in a if not torch.equal(a[key], b[key])]
        assert not different, f"{name}: {len(different)} tensors differ, e.g. {different[:3]}"
    a, b = (
        torch.load(run / "checkpoints" / "last_state.pt", weights_only=True)
        for run in (whole, resumed)
    )
    assert a.keys() == b.keys() and a["threads"] == b["threads"] == 1
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for name in ("metrics.json", "predictions/test.csv"):
        assert (whole / name).read_bytes() == (resumed / name).read_bytes(), name
    a, b = (pd.read_csv(run / "history.csv").drop(columns="seconds") for run in (whole, resumed))
    pd.testing.assert_frame_equal(a, b, check_exact=True)


@pytest.mark.parametrize("model", list(CASES))
def test_a_resumed_run_equals_an_uninterrupted_one_bit_for_bit(
    model, cohort, tmp_path, monkeypatch
):
    config = config_of(model)
    whole = train.fit(
        cohort, config, tmp_path / "whole", cache_dir=tmp_path / "cache", progress=False
    )
    resumed = tmp_path / "resumed"
    interrupted_then_resumed(cohort, config, resumed, CASES[model][2], monkeypatch)
    assert_identical_runs(whole, resumed)


def test_anchored_round_features_do_not_depend_on_the_batch_they_were_cached_in():
    """A resumed round refills the feature cache from other batches than the uninterrupted run
    did; the cached values must be the same bits whatever batch a subject first came in."""
    from adfuse import models
    from tests.models.conftest import PREPARE, make_spec, random_batch

    torch.manual_seed(0)
    model = models.create(
        "anchored", make_spec(), "cn_vs_ad", modalities=["t1", "fmri", "genotype"], prepare=PREPARE
    )
    batch = random_batch(model, n=12, seed=3, present="all")
    model.begin_stage(model.stages()[1])  # a round: the other groups' features are cached
    model.eval()
    caches = []
    for parts in ([list(range(12))], [[i] for i in range(12)]):
        model._feature_cache.clear()
        with torch.no_grad():
            for part in parts:
                model(batch.select(part))
        caches.append(dict(model._feature_cache))
    together, alone = caches
    assert together.keys() == alone.keys() and len(together) == 24
    for key, (states, mask) in together.items():
        assert torch.equal(states, alone[key][0]) and torch.equal(mask, alone[key][1]), key


def test_a_resume_under_another_thread_count_keeps_the_runs_own(cohort, tmp_path, monkeypatch):
    """Thread counts change how CPU kernels split their sums; the resumed run trains (and
    evaluates) with the count it started with, then gives the caller's back."""
    config = config_of("early_fusion")
    whole = train.fit(
        cohort, config, tmp_path / "whole", cache_dir=tmp_path / "cache", progress=False
    )
    resumed = tmp_path / "resumed"
    interrupted_then_resumed(cohort, config, resumed, 1, monkeypatch, threads=2)
    assert torch.get_num_threads() == 2
    assert_identical_runs(whole, resumed)
