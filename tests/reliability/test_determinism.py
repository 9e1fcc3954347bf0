"""Same seed and data -> identical results, for every registered model on CPU.

Every model of ``adfuse.models.available()`` is trained for a few optimizer steps on a fixed random
batch (torch models: AdamW on ``model.loss``, stages' first set of parameters; scikit-learn models:
``fit``), twice in one process and in two processes with different ``PYTHONHASHSEED`` (set and dict
iteration order, a classic hidden source of nondeterminism); the weights and outputs must agree
exactly. A few models are then trained end to end twice through the CLI: metrics.json identical.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adfuse import models
from tests.reliability.helpers import ADFUSE, synthesised

DIGESTS = r"""
import hashlib, json, sys
import torch
from adfuse import models
from tests.models.conftest import PREPARE, make_spec, random_batch

torch.set_num_threads(1)
spec = make_spec()


def digest(tensors):
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def train(name):
    torch.manual_seed(0)
    model = models.create(name, spec, "diagnosis", prepare=PREPARE)
    batch = random_batch(model, n=6, seed=1)
    if getattr(model, "kind", "torch") == "sklearn":
        model.fit(batch, batch, seed=0)
        return digest([model.predict(batch)])
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-3)
    model.train()
    for step in range(3):
        torch.manual_seed(100 + step)  # as the engine does per epoch: dropout draws from here
        optimizer.zero_grad(set_to_none=True)
        model.loss(batch, model(batch)).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        out = model(batch)
    return digest([out, *model.state_dict().values()])


result = {}
for name in sys.argv[1:]:
    result[name] = [train(name), train(name)]
print(json.dumps(result))
"""


def digests(names: list[str], hash_seed: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", DIGESTS, *names],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )


def test_every_model_trains_identically_from_one_seed():
    names = models.available()
    processes = [digests(names, seed) for seed in ("1", "2")]
    outputs = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr
        outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    first, second = outputs
    assert sorted(first) == sorted(names)
    within = [name for name, (a, b) in first.items() if a != b]
    across = [name for name in names if first[name][0] != second[name][0]]
    assert not within, f"two runs in one process differ: {within}"
    assert not across, f"runs under another PYTHONHASHSEED differ: {across}"


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory) -> Path:
    return synthesised(tmp_path_factory, 120, 4, ("clinical", "genotype", "fmri"))


@pytest.mark.parametrize(
    ("model", "modalities"),
    [("early_fusion", "clinical,genotype,fmri"), ("logreg", None)],
)
def test_cli_training_twice_gives_identical_metrics(cohort_dir, tmp_path, model, modalities):
    from adfuse.data.cohort import load_cohort
    from adfuse.prepare import dataset

    dataset(load_cohort(cohort_dir), "diagnosis", ["fmri"], cache_dir=tmp_path / "cache")
    processes = {}
    for run, hash_seed in (("a", "1"), ("b", "2")):  # side by side, other hash seeds
        command = [str(ADFUSE), "train", str(cohort_dir), "--model", model, "--epochs", "2"]
        command += ["--out", str(tmp_path / run), "--cache", str(tmp_path / "cache")]
        command += ["--modalities", modalities] if modalities else []
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1"}
        processes[run] = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
    for process in processes.values():
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr
    for name in ("metrics.json", "predictions/test.csv", "split.json", "preprocessing.json"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text(), name
