"""No code execution from files, no escape from the dataset folder, no network at run time.

- every ``torch.load`` passes ``weights_only=True``; nothing unpickles (pickle, joblib, dill,
  ``np.load(allow_pickle=True)``, ``pd.read_pickle``): checked on the source's syntax tree;
- every path an ``adfuse.toml`` names stays inside the dataset folder (``..``, absolute paths and
  symlinks pointing out are refused);
- training and prediction run with every socket refused, including a model on the bundled MiniLM.
"""

from __future__ import annotations

import ast
import shutil
import socket
from pathlib import Path

import pytest

import adfuse
from adfuse.config import FilesConfig
from adfuse.errors import ConfigError
from tests.reliability.helpers import synthesised

SOURCE = Path(adfuse.__file__).resolve().parent
UNPICKLERS = {"pickle", "cPickle", "joblib", "dill", "cloudpickle", "shelve", "marshal"}


def calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def keyword(call: ast.Call, name: str):
    for item in call.keywords:
        if item.arg == name:
            return item.value.value if isinstance(item.value, ast.Constant) else item.value
    return None


def findings(path: Path) -> list[str]:
    """What in one source file could execute code from a file it reads."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            modules.append(getattr(node, "module", None) or "")
            for module in modules:
                if module.split(".")[0] in UNPICKLERS and module != "pickle":
                    found.append(f"line {node.lineno}: imports {module}")
    for call, name in calls(tree):
        where = f"line {call.lineno}: {ast.unparse(call)[:80]}"
        if name.endswith("torch.load") or name == "load" and "torch" in ast.unparse(call):
            if keyword(call, "weights_only") is not True:
                found.append(f"{where} (torch.load without weights_only=True)")
        if name in {"pickle.load", "pickle.loads", "pickle.Unpickler"} or name.endswith(
            ("read_pickle", "joblib.load")
        ):
            found.append(f"{where} (unpickles)")
        if name in {"np.load", "numpy.load"} and keyword(call, "allow_pickle") not in (None, False):
            found.append(f"{where} (np.load with allow_pickle)")
    return found


def test_nothing_in_the_package_unpickles_or_loads_torch_files_unsafely():
    sources = sorted(SOURCE.rglob("*.py"))
    assert len(sources) > 30
    problems = {p.relative_to(SOURCE).as_posix(): findings(p) for p in sources}
    assert {k: v for k, v in problems.items() if v} == {}


def test_the_checker_sees_what_it_must_refuse(tmp_path):
    """The syntax-tree check is not vacuous: each unsafe form is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import torch, pickle, numpy as np, pandas as pd\n"
        "import joblib\n"
        "torch.load('x.pt')\n"
        "torch.load('x.pt', weights_only=False)\n"
        "pickle.loads(b'')\n"
        "np.load('x.npy', allow_pickle=True)\n"
        "pd.read_pickle('x.pkl')\n"
        "torch.load('x.pt', weights_only=True)\n"
        "np.load('x.npy', mmap_mode='r')\n"
    )
    assert len(findings(bad)) == 6


# --------------------------------------------------------------------------- adfuse.toml paths
@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    from tests.tiny_dataset import write_tiny_dataset

    return write_tiny_dataset(tmp_path_factory.mktemp("security") / "dataset")


@pytest.fixture()
def dataset(pristine, tmp_path) -> Path:
    return shutil.copytree(pristine, tmp_path / "inside" / "dataset")


@pytest.mark.parametrize("key", list(FilesConfig.model_fields))
@pytest.mark.parametrize("value", ["../outside", "/etc/passwd", "atlas/../../outside"])
def test_every_toml_path_stays_inside_the_dataset(dataset, key, value):
    (dataset.parent / "outside").mkdir(exist_ok=True)
    (dataset / "adfuse.toml").write_text(f'[files]\n{key} = "{value}"\n')
    with pytest.raises(ConfigError, match=rf"files.{key} = .* points outside the dataset folder"):
        adfuse.load_cohort(dataset)


def test_a_symlink_out_of_the_dataset_is_refused(dataset):
    outside = dataset.parent / "elsewhere.csv"
    shutil.copy(dataset / "ADNIMERGE.csv", outside)
    (dataset / "link.csv").symlink_to(outside)
    (dataset / "adfuse.toml").write_text('[files]\nadnimerge = "link.csv"\n')
    with pytest.raises(ConfigError, match="files.adnimerge = 'link.csv' points outside"):
        adfuse.load_cohort(dataset)
    (dataset / "adfuse.toml").write_text('[files]\nadnimerge = "./atlas/../ADNIMERGE.csv"\n')
    assert len(adfuse.load_cohort(dataset).subjects) == 4  # inside, however it is spelled


# --------------------------------------------------------------------------- no network
class NetworkUsed(AssertionError):
    pass


@pytest.fixture()
def no_network(monkeypatch):
    """Every way to open a connection or resolve a name raises."""

    def refuse(*args, **kwargs):
        raise NetworkUsed(f"network access at run time: {args[:2]}")

    class Refused(socket.socket):
        def __init__(self, family=-1, type=-1, proto=-1, fileno=None):  # noqa: A002
            if family in (socket.AF_INET, socket.AF_INET6, -1) and fileno is None:
                refuse(family, type)
            super().__init__(family, type, proto, fileno)

    monkeypatch.setattr(socket, "socket", Refused)
    for name in ("create_connection", "getaddrinfo", "gethostbyname", "socketpair"):
        monkeypatch.setattr(socket, name, refuse)


@pytest.fixture(scope="module")
def notes_cohort(tmp_path_factory) -> Path:
    return synthesised(tmp_path_factory, 90, 5, ("clinical", "genotype", "notes"))


@pytest.mark.parametrize(
    ("model", "modalities"),
    [("early_fusion", ["clinical", "notes"]), ("anchored", ["clinical", "notes"])],
)
def test_train_and_predict_offline(notes_cohort, tmp_path, no_network, model, modalities):
    import json

    from adfuse.train import TrainConfig, fit, predict_dataset

    with pytest.raises(NetworkUsed):  # the guard is in place
        socket.create_connection(("example.org", 443))
    config = TrainConfig.build(
        model=model, modalities=modalities, epochs=1, n_boot=10, patterns=False
    )
    run = fit(notes_cohort, config, tmp_path / "run", cache_dir=tmp_path / "cache", progress=False)
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    frame = predict_dataset(run, notes_cohort, cache_dir=tmp_path / "cache")
    assert len(frame) == 90 and "notes" in " ".join(frame["modalities"])
