"""The Python API exactly as DESIGN.md writes it, for every registered neural model.

``prepare.dataset(cohort, task)`` prepares each modality in its default view (volumes as 3D
volumes); a model that wants other views (ACMCA and SMMT slices, R-GenIMA ROI crops) re-prepares
the batch's subjects from its source dataset, with the same fitted statistics.
"""

from __future__ import annotations

import pytest
import torch

import adfuse
from adfuse.errors import ConfigError
from adfuse.prepare import collate

MODELS = adfuse.models.available(kind="torch")


@pytest.fixture(scope="module")
def design_data(synth_small, tmp_path_factory):
    cohort = adfuse.load_cohort(synth_small)
    cache = tmp_path_factory.mktemp("api-cache")
    made = {}
    for name in ("diagnosis", "progression"):
        task = adfuse.tasks.get(name)
        split = adfuse.splits.subject_split(cohort, task, seed=0)
        data = adfuse.prepare.dataset(cohort, task, split=split, part="train", cache_dir=cache)
        made[name] = (task, data)
    return cohort, made


@pytest.mark.parametrize("task_name", ["diagnosis", "progression"])
@pytest.mark.parametrize("name", MODELS)
def test_a_model_runs_on_the_default_dataset_of_the_design(design_data, name, task_name):
    cohort, made = design_data
    task, data = made[task_name]
    torch.manual_seed(0)
    model = adfuse.models.create(name, cohort.spec, task, preset="cpu").eval()
    batch = collate([data[i] for i in range(4)])
    with torch.no_grad():
        out = model(batch)
        again = model(data.batch([0, 1, 2, 3]))
        withheld = model(batch.without(model.modalities[:1]))
    expected = (4, len(task.classes)) if task.kind == "classification" else (4,)
    assert out.shape == expected and withheld.shape == expected
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, again)


def test_a_withheld_modality_stays_withheld_when_the_batch_is_re_prepared(design_data):
    cohort, made = design_data
    task, data = made["diagnosis"]
    model = adfuse.models.create("acmca", cohort.spec, task, preset="cpu").eval()
    batch = data.batch(list(range(6)))
    seen = {}
    model.register_forward_hook(lambda module, args, out: seen.update(batch=args[0]))
    with torch.no_grad():
        model(batch.without(["t1"]))
    conformed = seen["batch"]
    assert conformed.inputs["t1"].shape[1:] == model.input_shape("t1")  # a slice, not a volume
    assert not conformed.present["t1"].any()
    assert (conformed.inputs["t1"] == 0).all()


def test_a_batch_without_its_source_in_the_wrong_view_is_a_clear_error(design_data):
    cohort, made = design_data
    task, data = made["diagnosis"]
    model = adfuse.models.create("acmca", cohort.spec, task, preset="cpu").eval()
    batch = data.batch([0, 1])
    orphan = type(batch)(batch.inputs, batch.present, batch.target, batch.ids)
    with pytest.raises(ConfigError, match=r"t1 input of shape .*config=model.prepare_config\(\)"):
        model(orphan)
