"""Property-based fuzzing of every text reader: any bytes give a valid result or an AdfuseError.

Inputs are random bytes, or a valid file of the tiny dataset with random edits (delimiters, quotes,
BOMs, NaN/inf, negative numbers, stray bytes, cut lines), which reach deeper into each reader than
noise does. Examples are derandomised (the same every run) and bounded so the file runs in seconds;
``ADFUSE_FUZZ_EXAMPLES=2000`` searches longer.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adfuse.errors import AdfuseError
from tests.tiny_dataset import write_tiny_dataset

FMRI = "rawdata/sub-ADNI011S0002/ses-M000/func/sub-ADNI011S0002_ses-M000_task-rest_timeseries.tsv"
ASEG = """# Measure BrainSeg, BrainSegVol, Brain Segmentation Volume, 1069839.0, mm^3
# ColHeaders  Index SegId NVoxels Volume_mm3 StructName
  1   4   6563   6563.0  Left-Lateral-Ventricle
  2  17   4180   4180.2  Left-Hippocampus
"""
TOML = b"""[files]
adnimerge = "ADNIMERGE.csv"
[adnimerge.columns]
PTID = "PTID"
[adnimerge.values.DX_bl]
Control = "CN"
[clinical]
exclude = ["ABETA"]
"""
PIECES = [
    b",", b"\t", b";", b" ", b"\n", b"\r\n", b'"', b"'", b"\xef\xbb\xbf", b"\xff", b"\x00",
    b"nan", b"NaN", b"inf", b"-inf", b"-1", b"1e308", b"0", b"bl", b"BL", b"011_S_0002", b"{",
    b"}", b"[", b"=", b"#", b"# ColHeaders", b"..", b"/", b"\xc3\xa9", b"999999999999999999999",
]  # fmt: skip
EXAMPLES = int(os.environ.get("ADFUSE_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 200,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@st.composite
def edited(draw, valid: bytes) -> bytes:
    """``valid`` with a few random insertions, deletions and replacements, or cut short."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["insert", "delete", "replace", "cut"]))
        piece = draw(st.sampled_from(PIECES) | st.binary(min_size=1, max_size=4))
        if action == "insert":
            data[position:position] = piece
        elif action == "delete":
            del data[position : position + draw(st.integers(1, 20))]
        elif action == "replace":
            data[position : position + len(piece)] = piece
        else:
            del data[position:]
    return bytes(data)


def contents(valid: bytes):
    return st.one_of(st.binary(max_size=300), edited(valid), edited(valid), edited(valid))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    root = write_tiny_dataset(tmp_path_factory.mktemp("fuzz") / "dataset")
    stats = root / "derivatives" / "freesurfer" / "sub-ADNI011S0002_ses-M000" / "stats"
    stats.mkdir(parents=True)
    (stats / "aseg.stats").write_text(ASEG)
    (root / "adfuse.toml").write_bytes(TOML)
    return root


@pytest.fixture()
def dataset(pristine, tmp_path) -> Path:
    return shutil.copytree(pristine, tmp_path / "dataset")


def accepts_or_refuses(read: Callable[[], object]) -> None:
    """The property: a result, or an AdfuseError with a one-line message."""
    try:
        read()
    except AdfuseError as error:
        assert "\n" not in str(error), str(error)


def fuzz(dataset: Path, name: str, read: Callable[[Path], object]):
    """A hypothesis test that rewrites ``name`` in ``dataset`` and calls ``read(dataset)``."""
    path = dataset / name
    valid = path.read_bytes()

    @FUZZ
    @given(data=contents(valid))
    def check(data: bytes) -> None:
        path.write_bytes(data)
        accepts_or_refuses(lambda: read(dataset))

    check()


def test_adnimerge(dataset):
    from adfuse.data.adnimerge import read_adnimerge

    fuzz(dataset, "ADNIMERGE.csv", lambda root: read_adnimerge(root / "ADNIMERGE.csv"))


def test_time_series(dataset):
    from adfuse.data import timeseries

    def read(root: Path):
        timeseries.read_header(root / FMRI, FMRI)
        return timeseries.read_timeseries(root / FMRI, FMRI, "011_S_0002")

    fuzz(dataset, FMRI, read)


def test_notes(dataset):
    from adfuse.data.text import read_notes

    fuzz(dataset, "notes.jsonl", lambda root: read_notes(root / "notes.jsonl"))


def test_atlas_table(dataset):
    from adfuse.data.images import read_atlas

    fuzz(
        dataset,
        "atlas/dseg.tsv",
        lambda root: read_atlas(root / "atlas" / "dseg.nii.gz", root / "atlas" / "dseg.tsv"),
    )


@pytest.mark.parametrize("name", ["genotypes.bim", "genotypes.fam", "genotypes.genes.tsv"])
def test_plink_text(dataset, name):
    from adfuse.data.plink import read_plink

    def read(root: Path):
        genotypes = read_plink(root / "genotypes")
        if genotypes is not None:
            genotypes.read()

    fuzz(dataset, name, read)


def test_freesurfer_stats(dataset):
    from adfuse.data.freesurfer import read_session

    stats = "derivatives/freesurfer/sub-ADNI011S0002_ses-M000/stats"
    fuzz(dataset, f"{stats}/aseg.stats", lambda root: read_session(root / stats, stats))


def test_adfuse_toml(dataset):
    from adfuse.config import load_dataset_config

    def read(root: Path):
        config = load_dataset_config(root)
        for key in type(config.files).model_fields:
            config.path(root, key)

    fuzz(dataset, "adfuse.toml", read)


def test_whole_cohort_with_a_fuzzed_table(dataset):
    """The same property one level up: load_cohort with every reader and cross-check."""
    import warnings

    import adfuse

    def read(root: Path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cohort = adfuse.load_cohort(root)
            return cohort.spec, cohort.availability

    fuzz(dataset, "ADNIMERGE.csv", read)
