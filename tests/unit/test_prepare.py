"""Preprocessing: train-only statistics, zero placeholders, the on-disk cache."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import adfuse
from adfuse import splits
from adfuse.errors import ConfigError, DataLeakageError
from adfuse.prepare import PrepareConfig, collate, dataset, usable_modalities
from tests.tiny_dataset import write_tiny_dataset
from tests.unit.cohort_factory import sized_cohort


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return adfuse.load_cohort(write_tiny_dataset(tmp_path_factory.mktemp("prep") / "dataset"))


@pytest.fixture(scope="module")
def tabular(tmp_path_factory):
    return sized_cohort(tmp_path_factory.mktemp("tab"), {"CN": 20, "MCI": 20, "AD": 20})


def test_scaler_sees_only_training_subjects(tabular, tmp_path):
    split = splits.subject_split(tabular, "diagnosis", seed=1)
    train = dataset(tabular, "diagnosis", ["clinical"], split, "train", cache_dir=tmp_path)
    test = dataset(
        tabular,
        "diagnosis",
        ["clinical"],
        split,
        "test",
        preprocessor=train.preprocessor,
        cache_dir=tmp_path,
    )
    scaler = train.preprocessor.scalers["clinical"]
    assert scaler.fitted_on == sorted(split.train)
    age = scaler.numeric.index("AGE")
    expected = tabular.baseline.loc[split.train, "AGE"].mean()
    assert scaler.mean[age] == pytest.approx(expected)
    assert tabular.baseline["AGE"].mean() != pytest.approx(expected)  # the check can fail
    splits.check_disjoint(split, train.preprocessor.fitted_on())
    # standardised on train: train AGE has mean 0, test does not in general
    train_age = train.batch().inputs["clinical"][:, age]
    assert float(train_age.mean()) == pytest.approx(0.0, abs=1e-5)
    assert test.batch().inputs["clinical"].shape[1] == scaler.width


def test_a_scaler_fitted_on_test_subjects_is_a_leak(tabular, tmp_path):
    split = splits.subject_split(tabular, "diagnosis", seed=1)
    leaky = dataset(
        tabular, "diagnosis", ["clinical"], ids=split.train + split.test, cache_dir=tmp_path
    )
    with pytest.raises(DataLeakageError, match="clinical scaler"):
        splits.check_disjoint(split, leaky.preprocessor.fitted_on())


def test_absent_modalities_are_zero_placeholders(tiny, tmp_path):
    data = dataset(tiny, "diagnosis", cache_dir=tmp_path)
    batch = data.batch()
    assert batch.ids == tiny.subjects
    assert batch.present["amyloid"].tolist() == [True, False, True, False]
    assert torch.count_nonzero(batch.inputs["amyloid"][1]) == 0
    assert torch.count_nonzero(batch.inputs["amyloid"][0]) > 0
    assert torch.count_nonzero(batch.inputs["genotype"][3]) == 0
    assert batch.target.tolist() == [0, 2, 1, 1]  # CN, AD, MCI, MCI
    withheld = batch.without(["t1"])
    assert not withheld.present["t1"].any() and torch.count_nonzero(withheld.inputs["t1"]) == 0
    assert batch.present["t1"].all()  # the original is untouched
    items = [data[i] for i in (3, 0)]
    assert collate(items).ids == [tiny.subjects[3], tiny.subjects[0]]


def test_items_read_as_dict_or_attributes_and_collate_with_a_dataloader(tiny, tmp_path):
    from torch.utils.data import DataLoader

    data = dataset(tiny, "diagnosis", cache_dir=tmp_path)
    item = data[1]
    assert item.id == item["id"] == tiny.subjects[1] and item.ids == [tiny.subjects[1]]
    assert item.inputs is item["inputs"] and item.present["amyloid"] is False
    assert int(item.target) == 2
    with pytest.raises(AttributeError):
        item.nothing  # noqa: B018
    batches = list(DataLoader(data, batch_size=3, collate_fn=collate))
    assert [len(b) for b in batches] == [3, 1]
    joined = collate(batches)  # Batches are concatenated
    assert joined.ids == tiny.subjects
    assert torch.equal(joined.inputs["t1"], data.batch().inputs["t1"])


def test_views_and_shapes(tiny, tmp_path):
    config = PrepareConfig(
        volume_shape=(8, 8, 8),
        slice_shape=(16, 12),
        roi_size=3,
        fmri_length=10,
        views={"t1": "roi", "amyloid": "slice", "fmri": "connectivity"},
    )
    batch = dataset(
        tiny, "diagnosis", ["t1", "amyloid", "fmri"], config=config, cache_dir=tmp_path
    ).batch()
    assert batch.inputs["t1"].shape == (4, 3, 3, 3, 3)
    assert batch.inputs["amyloid"].shape == (4, 16, 12)
    assert batch.inputs["fmri"].shape == (4, 3, 3)
    with pytest.raises(ConfigError, match="view 'slice' does not apply to fmri"):
        PrepareConfig(views={"fmri": "slice"}).view("fmri", "timeseries")


def test_volume_is_z_scored_inside_the_brain(tiny, tmp_path):
    config = PrepareConfig(volume_shape=(8, 9, 10))  # the native grid: no interpolation
    volume = (
        dataset(tiny, "diagnosis", ["t1"], config=config, cache_dir=tmp_path)
        .batch()
        .inputs["t1"][0]
    )
    inside = volume[volume != 0]
    assert float(inside.mean()) == pytest.approx(0.0, abs=0.05)
    assert float(inside.std()) == pytest.approx(1.0, abs=0.05)


def test_cache_is_reused_and_a_corrupt_cache_is_rebuilt(tiny, tmp_path):
    first = dataset(tiny, "diagnosis", ["t1"], cache_dir=tmp_path).batch().inputs["t1"]
    folders = [p for p in tmp_path.iterdir() if p.name.startswith("t1-volume-")]
    assert len(folders) == 1
    data = folders[0] / "data.npy"
    stamp = data.stat().st_mtime_ns
    dataset(tiny, "diagnosis", ["t1"], cache_dir=tmp_path)
    assert data.stat().st_mtime_ns == stamp  # reused, not rebuilt
    data.write_bytes(data.read_bytes()[:100])  # truncated: must not be trusted
    again = dataset(tiny, "diagnosis", ["t1"], cache_dir=tmp_path).batch().inputs["t1"]
    torch.testing.assert_close(first, again)
    meta = json.loads((folders[0] / "index.json").read_text())
    meta["ids"] = meta["ids"][::-1]  # ids disagree with their checksum
    (folders[0] / "index.json").write_text(json.dumps(meta))
    torch.testing.assert_close(
        first, dataset(tiny, "diagnosis", ["t1"], cache_dir=tmp_path).batch().inputs["t1"]
    )


def test_bytes_overwritten_inside_the_cache_are_rebuilt(tiny, tmp_path):
    first = dataset(tiny, "diagnosis", ["t1"], cache_dir=tmp_path).batch().inputs["t1"]
    (folder,) = tmp_path.glob("t1-volume-*")
    data = folder / "data.npy"
    size = data.stat().st_size
    with data.open("r+b") as handle:  # same size, same header: only the row checksums can tell
        handle.seek(size // 2)
        handle.write(b"\xff" * 4000)
    assert data.stat().st_size == size
    again = dataset(tiny, "diagnosis", ["t1"], cache_dir=tmp_path).batch().inputs["t1"]
    torch.testing.assert_close(first, again)
    meta = json.loads((folder / "index.json").read_text())
    del meta["row_crc32"]  # an entry written before the row checksums existed
    (folder / "index.json").write_text(json.dumps(meta))
    stamp = data.stat().st_mtime_ns
    torch.testing.assert_close(
        first, dataset(tiny, "diagnosis", ["t1"], cache_dir=tmp_path).batch().inputs["t1"]
    )
    assert data.stat().st_mtime_ns != stamp  # rebuilt, not trusted
    assert "row_crc32" in json.loads((folder / "index.json").read_text())


def test_cache_key_changes_with_the_data(tiny, tmp_path):
    dataset(tiny, "diagnosis", ["t1"], cache_dir=tmp_path / "cache")
    copy = tmp_path / "copy"
    shutil.copytree(tiny.root, copy)
    (copy / "ADNIMERGE.csv").write_text(
        (copy / "ADNIMERGE.csv").read_text().replace("74.3", "74.4")
    )
    dataset(adfuse.load_cohort(copy), "diagnosis", ["t1"], cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("t1-volume-*"))) == 2


def test_modality_choice(tiny):
    assert "notes" not in usable_modalities(tiny, None) or "notes" in tiny.modalities
    with pytest.raises(ConfigError, match="Did you mean 'amyloid'"):
        usable_modalities(tiny, ["amyloyd"])
    with pytest.raises(ConfigError, match="'tau' is not in this dataset"):
        usable_modalities(tiny, ["tau"])


def test_genotype_missing_calls_are_imputed_with_the_training_mean(tiny, tmp_path):
    data = dataset(tiny, "diagnosis", ["genotype"], cache_dir=tmp_path)
    values = data.batch().inputs["genotype"]
    assert torch.isfinite(values).all()
    scaler = data.preprocessor.scalers["genotype"]
    np.testing.assert_allclose(scaler.mean, [1.0, 2 / 3, 1.0, 1.0], rtol=1e-6)
    assert float(values[1, 2]) == 0.0  # the missing call of 011_S_0003 -> the mean -> 0
