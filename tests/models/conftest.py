"""A synthetic cohort spec (no files), a tiny PrepareConfig, and random Batches for any model."""

from __future__ import annotations

import os

import pytest
import torch

from adfuse import tasks
from adfuse.data.cohort import ModalitySpec
from adfuse.prepare import Batch, PrepareConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

REGIONS = ("hippocampus", "entorhinal", "precuneus", "amygdala", "ventricles")
CLINICAL = ("AGE", "PTEDUCAT", "APOE4", "MMSE", "CDRSB", "ADAS13", "FAQ", "RAVLT", "PTGENDER")


def make_spec() -> dict[str, ModalitySpec]:
    """clinical (9 features, PTGENDER categorical), genotype (50 SNPs), t1 and amyloid volumes over
    5 atlas regions, an fMRI series (20 time points x 5 regions) and notes."""
    return {
        "clinical": ModalitySpec(
            "clinical", "tabular", (9,), CLINICAL, {"PTGENDER": ("Female", "Male")}
        ),
        "genotype": ModalitySpec("genotype", "genotype", (50,), tuple(f"rs{n}" for n in range(50))),
        "t1": ModalitySpec("t1", "volume", (20, 24, 20), REGIONS),
        "amyloid": ModalitySpec("amyloid", "volume", (20, 24, 20), REGIONS),
        "fmri": ModalitySpec("fmri", "timeseries", (20, 5), REGIONS),
        "notes": ModalitySpec("notes", "text", ()),
    }


PREPARE = PrepareConfig(
    volume_shape=(16, 16, 16),
    slice_shape=(32, 32),
    roi_size=4,
    fmri_length=20,
    text_max_tokens=16,
)


@pytest.fixture(scope="session")
def spec() -> dict[str, ModalitySpec]:
    return make_spec()


@pytest.fixture(scope="session")
def prepare() -> PrepareConfig:
    return PREPARE


def text_vocabulary(model) -> int:
    """The smallest vocabulary of the model's text encoders (1000 when it has none)."""
    from adfuse.models.text import TextEncoder

    sizes = [m.vocab_size for m in model.modules() if isinstance(m, TextEncoder)]
    return min(sizes, default=1000)


def random_inputs(model, modality: str, n: int, generator: torch.Generator) -> torch.Tensor:
    shape = (n, *model.input_shape(modality))
    if model.spec[modality].kind == "text":
        return torch.randint(1, text_vocabulary(model), shape, generator=generator)
    return torch.randn(shape, generator=generator)


def random_batch(model, n: int = 4, seed: int = 0, present: str = "random") -> Batch:
    """A Batch for ``model``: inputs of ``model.input_shape(m)`` for each of its modalities.

    ``present="random"``: random masks (every modality absent for at least one sample and present
    for at least one when n >= 2), absent inputs zeroed; ``"all"``: everything present.
    """
    generator = torch.Generator().manual_seed(seed)
    inputs, masks = {}, {}
    for position, modality in enumerate(model.modalities):
        x = random_inputs(model, modality, n, generator)
        if present == "all":
            here = torch.ones(n, dtype=torch.bool)
        else:
            here = torch.rand(n, generator=generator) < 0.5
            if n >= 2:  # both cases in every batch, at different samples per modality
                here[position % n] = True
                here[(position + 1) % n] = False
        inputs[modality] = torch.where(here.view(-1, *[1] * (x.dim() - 1)), x, torch.zeros_like(x))
        masks[modality] = here
    if model.task_kind == "classification":
        target = torch.randint(0, model.n_classes, (n,), generator=generator)
    else:
        target = torch.randn(n, generator=generator)
    return Batch(inputs, masks, target, [f"S{seed}_{i}" for i in range(n)])


DIAGNOSIS = tasks.get("diagnosis")
PROGRESSION = tasks.get("progression")
