"""The bad-input catalogue: every reader, config and CLI command fed something it must refuse.

One table. Each case copies a small valid dataset (or a trained run) into its own folder, breaks one
thing, runs ``adfuse ...`` through ``adfuse.cli.main`` and checks what a user sees: the typed error,
ONE line on stderr naming the file/subject/field, exit 3 (bad data) or 2 (bad usage/config), no
traceback, and nothing written or changed anywhere in the case's folder. The reader cases of
``tests/unit/test_readers.py`` (``BAD_LOAD``, checked there against ``load_cohort``) are part of
the table, run through ``adfuse info``; a representative subset also runs as the installed
console script in a subprocess.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from adfuse.errors import AdfuseError, ConfigError, DataError
from tests.reliability.helpers import (
    fmri_of,
    imaged_cohort,
    run_main,
    run_script,
    snapshot,
    t1_of,
)
from tests.tiny_dataset import SHAPE, write_tiny_dataset
from tests.unit.test_readers import BAD_LOAD, T1, _nifti, _replace, _truncate, _write

USAGE = "usage"  # typer's own usage error (unknown option, bad value): exit 2, its own message
EXIT = {DataError: 3, ConfigError: 2, USAGE: 2}
FIRST = "100_S_0001"  # a CN subject of the imaged cohort


@dataclass
class Paths:
    """The folders of one case (all under its own tmp_path)."""

    tmp: Path
    data: Path
    run: Path
    out: Path
    cache: Path

    def fill(self, arg: str) -> str:
        return arg.format(
            data=self.data, run=self.run, out=self.out, cache=self.cache, tmp=self.tmp
        )


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    error: type[AdfuseError] | str
    pattern: str  # searched in the one stderr line (after "error: ") or, for usage, in stderr
    base: str = "tiny"  # tiny (4 subjects, every reader) | imaged (30 subjects) | run (+ a run)
    change: Callable[[Paths], None] | None = field(default=None, compare=False)


def on_data(change: Callable[[Path], None]) -> Callable[[Paths], None]:
    return lambda paths: change(paths.data)


def in_run(name: str, edit: Callable[[dict], None]) -> Callable[[Paths], None]:
    def change(paths: Paths) -> None:
        path = paths.run / name
        document = json.loads(path.read_text())
        edit(document)
        path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")  # as adfuse does

    return change


def _run_file(name: str, data: bytes | None) -> Callable[[Paths], None]:
    def change(paths: Paths) -> None:
        path = paths.run / name
        path.unlink() if data is None else path.write_bytes(data)

    return change


def _truncate_run_file(name: str, keep: int) -> Callable[[Paths], None]:
    def change(paths: Paths) -> None:
        path = paths.run / name
        path.write_bytes(path.read_bytes()[:keep])

    return change


def _nan_voxel(paths: Paths) -> None:
    volume = np.ones(SHAPE, np.float32)
    volume[1, 2, 3] = np.inf
    _nifti(t1_of(paths.data, FIRST).relative_to(paths.data).as_posix(), volume)(paths.data)


def _bad_time_point(paths: Paths) -> None:
    path = fmri_of(paths.data, FIRST)
    lines = path.read_text().splitlines()
    lines[2] = "nan\t" + lines[2].split("\t", 1)[1]
    path.write_text("\n".join(lines) + "\n")


def _duplicate_header_column(root: Path) -> None:
    path = root / "ADNIMERGE.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0] + ",MMSE"] + [line + ",27" for line in lines[1:]]) + "\n")


def _freesurfer(text: str) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        stats = root / "derivatives" / "freesurfer" / "sub-ADNI011S0002_ses-M000" / "stats"
        stats.mkdir(parents=True)
        (stats / "aseg.stats").write_text(text)

    return change


def _out_is_a_file(paths: Paths) -> None:
    paths.out.write_text("mine")


def _out_not_empty(paths: Paths) -> None:
    paths.out.mkdir()
    (paths.out / "precious.txt").write_text("keep me")


TRAIN = ("train", "{data}", "--model", "unimodal", "--modalities", "clinical", "--epochs", "1")
TRAIN_OUT = ("--out", "{out}", "--cache", "{cache}")

NEW_CASES: dict[str, Case] = {
    # ------------------------------------------------------------------ readers (via info)
    "csv duplicate column": Case(
        ("info", "{data}"),
        DataError,
        r"^ADNIMERGE.csv: duplicate column 'MMSE'",
        change=on_data(_duplicate_header_column),
    ),
    "csv header only": Case(
        ("info", "{data}"),
        DataError,
        r"^ADNIMERGE.csv: no rows under the header",
        change=on_data(lambda r: (r / "ADNIMERGE.csv").write_text("RID,PTID,VISCODE,DX_bl\n")),
    ),
    "csv UTF-16": Case(
        ("info", "{data}"),
        DataError,
        r"^ADNIMERGE.csv: not UTF-8 text",
        change=on_data(
            lambda r: (r / "ADNIMERGE.csv").write_bytes(
                (r / "ADNIMERGE.csv").read_text().encode("utf-16")
            )
        ),
    ),
    "csv unterminated quote": Case(
        ("info", "{data}"),
        DataError,
        r"^ADNIMERGE.csv: malformed table",
        change=on_data(
            lambda r: (r / "ADNIMERGE.csv").write_text(
                (r / "ADNIMERGE.csv").read_text() + '"6,oops\n'
            )
        ),
    ),
    "csv first row one field too long": Case(
        ("info", "{data}"),
        DataError,
        r"^ADNIMERGE.csv: malformed table: a row has more fields than the header",
        change=on_data(_replace("ADNIMERGE.csv", "2,011_S_0002,bl,", "2,,011_S_0002,bl,")),
    ),
    "visit duplicated by case (BL vs bl)": Case(
        ("info", "{data}"),
        DataError,
        r"subject 022_S_0005: VISCODE: VISCODE 'bl' appears 2 times",
        change=on_data(
            lambda r: (r / "ADNIMERGE.csv").write_text(
                (r / "ADNIMERGE.csv").read_text()
                + "5,022_S_0005,BL,2005-11-10,EMCI,MCI,73.7,Female,16,2,,1.5,14,,0\n"
            )
        ),
    ),
    "RID changes between visits": Case(
        ("info", "{data}"),
        DataError,
        r"subject 011_S_0002: RID: RID differs between visits",
        change=on_data(_replace("ADNIMERGE.csv", "2,011_S_0002,m06", "7,011_S_0002,m06")),
    ),
    "fam IIDs match no PTID": Case(
        ("info", "{data}"),
        DataError,
        r"^genotypes.fam: IID: none of the 3 sample IIDs \(e.g. .011_X_0002.\) is a PTID",
        change=on_data(_replace("genotypes.fam", "_S_", "_X_", count=-1)),
    ),
    "fam empty": Case(
        ("info", "{data}"),
        DataError,
        r"^genotypes.fam: the file is empty",
        change=on_data(_write("genotypes.fam", b"")),
    ),
    "bim one SNP short of the bed": Case(
        ("info", "{data}"),
        DataError,
        r"^genotypes.bed: 7 bytes, expected 6 for 3 samples \(genotypes.fam\) x 3 SNPs",
        change=on_data(
            lambda r: (r / "genotypes.bim").write_text(
                "".join((r / "genotypes.bim").read_text().splitlines(keepends=True)[:3])
            )
        ),
    ),
    "bim position infinite": Case(
        ("info", "{data}"),
        DataError,
        r"^genotypes.bim: pos: line 2: position '1e310' is not a base-pair number",
        change=on_data(_replace("genotypes.bim", "44908822", "1e310")),
    ),
    "bim not text": Case(
        ("info", "{data}"),
        DataError,
        r"^genotypes.bim: not a text file",
        change=on_data(_write("genotypes.bim", b"\xff\xfe\x00\x81" * 10)),
    ),
    "genes table without gene column": Case(
        ("info", "{data}"),
        DataError,
        r"^genotypes.genes.tsv: gene: required column 'gene'",
        change=on_data(_replace("genotypes.genes.tsv", "snp\tgene", "snp\tsymbol")),
    ),
    "NIfTI header truncated": Case(
        ("info", "{data}"),
        DataError,
        rf"^{T1}: subject 011_S_0002: t1: not a readable NIfTI file",
        change=on_data(_truncate(T1, 60)),
    ),
    "atlas 4D": Case(
        ("info", "{data}"),
        DataError,
        r"^atlas/dseg.nii.gz: a label volume must be 3D",
        change=on_data(_nifti("atlas/dseg.nii.gz", np.zeros((*SHAPE, 2), np.uint8))),
    ),
    "atlas table empty": Case(
        ("info", "{data}"),
        DataError,
        r"^atlas/dseg.tsv: the file is empty",
        change=on_data(_write("atlas/dseg.tsv", b"")),
    ),
    "atlas index not a number": Case(
        ("info", "{data}"),
        DataError,
        r"^atlas/dseg.tsv: index: index 'two' is not an integer",
        change=on_data(_replace("atlas/dseg.tsv", "2\trh", "two\trh")),
    ),
    "atlas names repeat": Case(
        ("info", "{data}"),
        DataError,
        r"^atlas/dseg.tsv: region indices and names must be unique",
        change=on_data(_replace("atlas/dseg.tsv", "rh-hippocampus", "lh-hippocampus")),
    ),
    "time series empty": Case(
        ("info", "{data}"),
        DataError,
        r"_timeseries.tsv: the file is empty",
        change=on_data(
            _write(
                "rawdata/sub-ADNI011S0002/ses-M000/func/sub-ADNI011S0002_ses-M000_task-rest_timeseries.tsv",
                b"",
            )
        ),
    ),
    "notes line not an object": Case(
        ("info", "{data}"),
        DataError,
        r"^notes.jsonl: line 1: expected a JSON object",
        change=on_data(_write("notes.jsonl", b"[1, 2]\n")),
    ),
    "notes not UTF-8": Case(
        ("info", "{data}"),
        DataError,
        r"^notes.jsonl: not UTF-8 text",
        change=on_data(_write("notes.jsonl", b'{"PTID": "011_S_0002", "text": "\xe9"}\n')),
    ),
    "FreeSurfer column repeats": Case(
        ("info", "{data}"),
        DataError,
        r"aseg.stats: line 1: a column name repeats",
        change=on_data(
            _freesurfer("# ColHeaders Index StructName Volume_mm3 Volume_mm3\n1 Hippo 3 4\n")
        ),
    ),
    "FreeSurfer NaN volume": Case(
        ("info", "{data}"),
        DataError,
        r"aseg.stats: Volume_mm3: Volume_mm3='nan' is not a finite number",
        change=on_data(_freesurfer("# ColHeaders Index StructName Volume_mm3\n1 Hippo nan\n")),
    ),
    "dataset is a file": Case(
        ("info", "{tmp}/file.csv"),
        DataError,
        r"file.csv: not a dataset folder",
        change=lambda p: (p.tmp / "file.csv").write_text("x"),
    ),
    # ------------------------------------------------------------------ adfuse.toml
    "toml absolute path": Case(
        ("info", "{data}"),
        ConfigError,
        r"^adfuse.toml: files.adnimerge = '/etc/passwd' points outside the dataset folder",
        change=on_data(_write("adfuse.toml", b'[files]\nadnimerge = "/etc/passwd"\n')),
    ),
    "toml wrong type": Case(
        ("info", "{data}"),
        ConfigError,
        r"^adfuse.toml: files.adnimerge: Input should be a valid string \(got 3\)",
        change=on_data(_write("adfuse.toml", b"[files]\nadnimerge = 3\n")),
    ),
    "toml not UTF-8": Case(
        ("info", "{data}"),
        ConfigError,
        r"^adfuse.toml: not valid TOML",
        change=on_data(_write("adfuse.toml", b"\xff\xfe[files]\n")),
    ),
    # ------------------------------------------------------------------ voxel/series content
    "infinite voxel (train)": Case(
        (*TRAIN[:5], "t1", *TRAIN[6:], *TRAIN_OUT),
        DataError,
        rf"_T1w.nii.gz: subject {FIRST}: voxels: voxel \(1, 2, 3\) is inf",
        base="imaged",
        change=_nan_voxel,
    ),
    "NaN time point (train)": Case(
        (*TRAIN[:5], "fmri", *TRAIN[6:], *TRAIN_OUT),
        DataError,
        rf"_timeseries.tsv: subject {FIRST}: lh-hippocampus: time point 2: 'nan'",
        base="imaged",
        change=_bad_time_point,
    ),
    "bad table (train)": Case(
        (*TRAIN, *TRAIN_OUT),
        DataError,
        r"^ADNIMERGE.csv: subject 1\d\d_S_\d{4}: AGE: VISCODE 'bl': AGE='-70.0' is outside",
        base="imaged",
        change=on_data(_replace("ADNIMERGE.csv", ",70.0,", ",-70.0,")),
    ),
    # ------------------------------------------------------------------ options and configs
    "too few subjects per class": Case(
        (*TRAIN, *TRAIN_OUT),
        DataError,
        r"task .diagnosis.: class .CN. has 1 subject after exclusions; at least 2 are needed",
    ),
    "unknown model": Case(
        ("train", "{data}", "--model", "unimodl", *TRAIN_OUT),
        ConfigError,
        r"unknown model 'unimodl'. Did you mean 'unimodal'\?",
        base="imaged",
    ),
    "unknown task": Case(
        (*TRAIN, "--task", "cn_vs_da", *TRAIN_OUT),
        ConfigError,
        r"unknown task 'cn_vs_da'",
        base="imaged",
    ),
    "unknown modality": Case(
        ("train", "{data}", "--model", "unimodal", "--modalities", "pett1", *TRAIN_OUT),
        ConfigError,
        r"modality .pett1. is not in this dataset",
        base="imaged",
    ),
    "modality not in the dataset": Case(
        ("train", "{data}", "--model", "unimodal", "--modalities", "tau", *TRAIN_OUT),
        ConfigError,
        r"modality 'tau' is not in this dataset",
        base="imaged",
    ),
    "--set without =": Case(
        (*TRAIN, "--set", "hidden", *TRAIN_OUT),
        ConfigError,
        r"--set 'hidden': expected KEY=VALUE",
        base="imaged",
    ),
    "--set unknown model key": Case(
        (*TRAIN, "--set", "no_such_key=3", *TRAIN_OUT),
        ConfigError,
        r"model unimodal: unknown key 'no_such_key'",
        base="imaged",
    ),
    "--set wrong value type": Case(
        ("train", "{data}", "--model", "acmca", "--set", "heads=many", *TRAIN_OUT),
        ConfigError,
        r"model acmca: heads: ",
        base="imaged",
    ),
    "preset not cpu/paper": Case(
        (*TRAIN, "--preset", "gpu", *TRAIN_OUT),
        ConfigError,
        r"^train config: preset: ",
        base="imaged",
    ),
    "fraction 0": Case(
        (*TRAIN, "--fraction", "0", *TRAIN_OUT),
        ConfigError,
        r"^train config: fraction: .*greater than 0",
        base="imaged",
    ),
    "learning rate 0": Case(
        (*TRAIN, "--lr", "0", *TRAIN_OUT),
        ConfigError,
        r"^train config: lr: ",
        base="imaged",
    ),
    "device unknown": Case(
        (*TRAIN, "--device", "tpu", *TRAIN_OUT),
        ConfigError,
        r"unknown device 'tpu'",
        base="imaged",
    ),
    "epochs not a number": Case((*TRAIN[:-1], "many", *TRAIN_OUT), USAGE, r"--epochs"),
    "train into a non-empty folder": Case(
        (*TRAIN, *TRAIN_OUT),
        ConfigError,
        r"folder is not empty; pass --force",
        base="imaged",
        change=_out_not_empty,
    ),
    "resume a folder that is no run": Case(
        (*TRAIN, *TRAIN_OUT, "--resume"),
        ConfigError,
        r"not a run folder \(no run.json\)",
        base="imaged",
        change=_out_not_empty,
    ),
    "info unknown task": Case(
        ("info", "{data}", "--task", "diagnosys"),
        ConfigError,
        r"unknown task 'diagnosys'. Did you mean 'diagnosis'\?",
    ),
    "synth unknown size": Case(
        ("synth", "{out}", "--subjects", "20", "--size", "huge"),
        ConfigError,
        r"synth: size must be one of small, medium, paper \(got 'huge'\)",
    ),
    "synth unknown modality": Case(
        ("synth", "{out}", "--subjects", "20", "--modalities", "clinical,pet"),
        ConfigError,
        r"synth: unknown modality 'pet'; choose from clinical, genotype, t1",
    ),
    "synth too few subjects": Case(("synth", "{out}", "--subjects", "5"), USAGE, r"10"),
    "synth onto a file": Case(
        ("synth", "{out}", "--subjects", "20"),
        ConfigError,
        r"exists and is not a folder",
        change=_out_is_a_file,
    ),
    "synth onto a non-empty folder": Case(
        ("synth", "{out}", "--subjects", "20"),
        ConfigError,
        r"is not empty; replace it with --force",
        change=_out_not_empty,
    ),
    "sweep fractions not numbers": Case(
        ("sweep", "{data}", "--model", "unimodal", "--fractions", "a,b", "--out", "{out}"),
        ConfigError,
        r"--fractions: not a comma-separated list of numbers: 'a,b'",
        base="imaged",
    ),
    "sweep on bad data": Case(
        ("sweep", "{data}", "--model", "unimodal", "--seeds", "1", "--out", "{out}"),
        DataError,
        r"^ADNIMERGE.csv: not UTF-8 text",
        base="imaged",
        change=on_data(_write("ADNIMERGE.csv", b"RID,PTID\n1,\xe9\n")),
    ),
    "combinations on a classification task": Case(
        ("combinations", "{data}", "--task", "diagnosis", "--seeds", "1", "--out", "{out}"),
        ConfigError,
        r"task .diagnosis. is a classification; the comparison reports RMSE",
        base="imaged",
    ),
    "combinations unknown model": Case(
        ("combinations", "{data}", "--models", "permoe,flexmo", "--out", "{out}"),
        ConfigError,
        r"unknown model 'flexmo'",
        base="imaged",
    ),
    "pretrain unknown modality": Case(
        ("pretrain", "{data}", "--modality", "pet", "--out", "{out}"),
        ConfigError,
        r"pretrain config: modality: ",
        base="imaged",
    ),
    "pretrain on bad data": Case(
        ("pretrain", "{data}", "--modality", "smri", "--out", "{out}", "--cache", "{cache}"),
        DataError,
        r"^ADNIMERGE.csv: the file is missing",
        base="imaged",
        change=on_data(lambda r: (r / "ADNIMERGE.csv").unlink()),
    ),
    "models takes no argument": Case(("models", "extra"), USAGE, r"extra"),
    "no such command": Case(("trian", "{data}"), USAGE, r"trian"),
    # ------------------------------------------------------------------ run folders
    "evaluate a folder that is no run": Case(
        ("evaluate", "{tmp}", "--cache", "{cache}"),
        ConfigError,
        r"not a run folder \(no run.json\)",
    ),
    "run of another format version": Case(
        ("evaluate", "{run}", "--dataset", "{data}", "--cache", "{cache}"),
        ConfigError,
        r"run.json: run format 99, this adfuse reads format 1 \(a run folder of another version\)",
        base="run",
        change=in_run("run.json", lambda d: d.update(format=99)),
    ),
    "predict with a run of another version": Case(
        ("predict", "{run}", "{data}", "--out", "{out}", "--cache", "{cache}"),
        ConfigError,
        r"run format 99",
        base="run",
        change=in_run("run.json", lambda d: d.update(format=99)),
    ),
    "explain a run of another version": Case(
        ("explain", "{run}", "--dataset", "{data}", "--cache", "{cache}"),
        ConfigError,
        r"run format 99",
        base="run",
        change=in_run("run.json", lambda d: d.update(format=99)),
    ),
    "resume a run of another version": Case(
        (*TRAIN, "--out", "{run}", "--cache", "{cache}", "--resume"),
        ConfigError,
        r"run format 99",
        base="run",
        change=in_run("run.json", lambda d: d.update(format=99)),
    ),
    "run.json not JSON": Case(
        ("evaluate", "{run}", "--dataset", "{data}", "--cache", "{cache}"),
        ConfigError,
        r"run.json: not valid JSON",
        base="run",
        change=_run_file("run.json", b"{truncated"),
    ),
    "run.json config with an unknown key": Case(
        ("evaluate", "{run}", "--dataset", "{data}", "--cache", "{cache}"),
        ConfigError,
        r"train config: unknown key 'warmup'",
        base="run",
        change=in_run("run.json", lambda d: d["config"].update(warmup=3)),
    ),
    "evaluate an unfinished run": Case(
        ("evaluate", "{run}", "--dataset", "{data}", "--cache", "{cache}"),
        ConfigError,
        r"the run is not complete \(status 'training'\); use --resume",
        base="run",
        change=in_run("run.json", lambda d: d.update(status="training")),
    ),
    "evaluate a failed run": Case(
        ("evaluate", "{run}", "--dataset", "{data}", "--cache", "{cache}"),
        ConfigError,
        r"the run failed \(training diverged: loss nan\)",
        base="run",
        change=in_run(
            "run.json", lambda d: d.update(status="failed", error="training diverged: loss nan")
        ),
    ),
    "evaluate on a changed dataset": Case(
        ("evaluate", "{run}", "--dataset", "{data}", "--cache", "{cache}"),
        ConfigError,
        r"not the dataset this run was trained on",
        base="run",
        change=on_data(_replace("ADNIMERGE.csv", ",70.0,", ",71.0,")),
    ),
    "evaluate on a dataset without the run's subjects": Case(
        ("evaluate", "{run}", "--dataset", "{data}", "--cache", "{cache}"),
        ConfigError,
        r"not the dataset this run was trained on",
        base="run",
        change=on_data(_replace("ADNIMERGE.csv", "100_S_0001", "100_S_0099", count=-1)),
    ),
    "split.json naming a subject the dataset lacks": Case(
        ("evaluate", "{run}", "--dataset", "{data}", "--cache", "{cache}"),
        ConfigError,
        r"split.json: subject 999_S_9999 \(1 in all\) is not in .*the run was made on another",
        base="run",
        change=in_run("split.json", lambda d: d["test"].append("999_S_9999")),
    ),
    "predict over an existing file": Case(
        ("predict", "{run}", "{data}", "--out", "{out}", "--cache", "{cache}"),
        ConfigError,
        r"exists; pass --force to replace it",
        base="run",
        change=_out_is_a_file,
    ),
    "predict on data without a feature": Case(
        ("predict", "{run}", "{data}", "--out", "{out}", "--cache", "{cache}"),
        ConfigError,
        r"clinical feature names differ from the run's .*missing \['PTEDUCAT'\]",
        base="run",
        change=on_data(
            lambda r: (r / "ADNIMERGE.csv").write_text(
                "\n".join(
                    ",".join(f for i, f in enumerate(line.split(",")) if i != 8)
                    for line in (r / "ADNIMERGE.csv").read_text().splitlines()
                )
                + "\n"
            )
        ),
    ),
    "predict on bad data": Case(
        ("predict", "{run}", "{data}", "--out", "{out}", "--cache", "{cache}"),
        DataError,
        r"^ADNIMERGE.csv: subject 100_S_0001: MMSE: VISCODE 'bl': MMSE='29.5.' is not a number",
        base="run",
        change=on_data(_replace("ADNIMERGE.csv", ",29,", ",29.5.,")),
    ),
    "weights truncated": Case(
        ("predict", "{run}", "{data}", "--out", "{out}", "--cache", "{cache}"),
        DataError,
        r"checkpoints/best.safetensors: ",
        base="run",
        change=_truncate_run_file("checkpoints/best.safetensors", 40),
    ),
    "fitted statistics missing": Case(
        ("predict", "{run}", "{data}", "--out", "{out}", "--cache", "{cache}"),
        ConfigError,
        r"preprocessing.json: ",
        base="run",
        change=_run_file("preprocessing.json", None),
    ),
    "resume state corrupt": Case(
        (*TRAIN, "--out", "{run}", "--cache", "{cache}", "--resume"),
        DataError,
        r"checkpoints/last_state.pt: ",
        base="run",
        change=lambda p: (
            in_run("run.json", lambda d: d.update(status="training"))(p),
            _truncate_run_file("checkpoints/last_state.pt", 100)(p),
        ),
    ),
}

CASES: dict[str, Case] = {
    **{
        f"reader: {name}": Case(("info", "{data}"), error, pattern, change=on_data(change))
        for name, (change, error, pattern) in BAD_LOAD.items()
    },
    **NEW_CASES,
}


# --------------------------------------------------------------------------- the bases
@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    from adfuse.train import TrainConfig, fit

    root = tmp_path_factory.mktemp("bases")
    imaged = imaged_cohort(root / "imaged")
    # the config `adfuse train DATA --model unimodal --modalities clinical --epochs 1` builds
    config = TrainConfig.build(model="unimodal", modalities=["clinical"], epochs=1)
    run = fit(imaged, config, root / "run", cache_dir=root / "cache", progress=False)
    return {"tiny": write_tiny_dataset(root / "tiny"), "imaged": imaged, "run": run}


def prepare_case(case: Case, bases: dict[str, Path], tmp_path: Path) -> Paths:
    paths = Paths(tmp_path, tmp_path / "data", tmp_path / "run", tmp_path / "out", tmp_path / "c")
    shutil.copytree(bases["imaged" if case.base == "run" else case.base], paths.data)
    if case.base == "run":
        shutil.copytree(bases["run"], paths.run)
        for name in ("run.json",):  # the copy points at its own dataset copy
            document = json.loads((paths.run / name).read_text())
            document["dataset"]["path"] = str(paths.data)
            (paths.run / name).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    if case.change is not None:
        case.change(paths)
    return paths


def written(paths: Paths) -> dict[str, str]:
    """The case folder's snapshot; an empty cache folder (created before the error) is no file."""
    after = snapshot(paths.tmp)
    if paths.cache.is_dir() and not any(paths.cache.iterdir()):
        after.pop(paths.cache.name)
    return after


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, bases, tmp_path, monkeypatch, capsys):
    case = CASES[name]
    paths = prepare_case(case, bases, tmp_path)
    before = snapshot(tmp_path)
    outcome = run_main([paths.fill(a) for a in case.args], monkeypatch, capsys)
    assert "Traceback" not in outcome.stderr
    assert outcome.code == EXIT[case.error], outcome.stderr
    if case.error == USAGE:
        assert isinstance(outcome.error, SystemExit) and re.search(case.pattern, outcome.stderr)
    else:
        assert type(outcome.error) is case.error, repr(outcome.error)
        assert len(outcome.lines) == 1, outcome.stderr
        message = outcome.lines[0].removeprefix("error: ")
        assert message == str(outcome.error)
        assert re.search(case.pattern, message), message
    assert written(paths) == before, "the failed command wrote or changed files"


def test_the_catalogue_is_large_and_covers_every_command():
    commands = {case.args[0] for case in CASES.values()}
    assert len(CASES) >= 40
    assert {
        "synth", "info", "train", "evaluate", "predict", "explain", "sweep", "combinations",
        "pretrain", "models",
    } <= commands  # fmt: skip


# A representative subset through the installed console script: the real process exit code.
SCRIPT_CASES = [
    "reader: negative age",
    "reader: bed truncated",
    "reader: toml unknown key",
    "reader: NIfTI gzip of text",  # nibabel's own log lines must not reach stderr
    "csv duplicate column",
    "run of another format version",
    "unknown model",
    "synth too few subjects",
]


@pytest.mark.parametrize("name", SCRIPT_CASES)
def test_bad_input_as_a_process(name, bases, tmp_path):
    case = CASES[name]
    paths = prepare_case(case, bases, tmp_path)
    before = snapshot(tmp_path)
    result = run_script([paths.fill(a) for a in case.args])
    assert "Traceback" not in result.stderr
    assert result.returncode == EXIT[case.error], result.stderr
    if case.error != USAGE:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and re.search(case.pattern, lines[0].removeprefix("error: "))
    assert written(paths) == before


def test_debug_shows_the_traceback(bases, tmp_path):
    case = CASES["reader: negative age"]
    paths = prepare_case(case, bases, tmp_path)
    result = run_script(["--debug", *(paths.fill(a) for a in case.args)])
    assert result.returncode != 0 and "Traceback" in result.stderr and "DataError" in result.stderr


def test_a_bom_is_accepted_in_every_text_file(bases, tmp_path, monkeypatch, capsys):
    """UTF-8 with a BOM (what Excel writes) reads exactly like UTF-8 without one."""
    data = shutil.copytree(bases["tiny"], tmp_path / "data")
    (data / "adfuse.toml").write_text('[files]\nnotes = "notes.jsonl"\n')
    texts = [
        "ADNIMERGE.csv",
        "genotypes.bim",
        "genotypes.fam",
        "genotypes.genes.tsv",
        "atlas/dseg.tsv",
        "notes.jsonl",
        "adfuse.toml",
        *(p.relative_to(data).as_posix() for p in data.rglob("*_timeseries.tsv")),
    ]
    plain = run_main(["info", data], monkeypatch, capsys)
    assert plain.code == 0, plain.stderr
    for name in texts:
        (data / name).write_bytes(b"\xef\xbb\xbf" + (data / name).read_bytes())
    with_bom = run_main(["info", data], monkeypatch, capsys)
    assert with_bom.code == 0, with_bom.stderr
    assert with_bom.stdout == plain.stdout
    import adfuse

    cohort = adfuse.load_cohort(data)
    assert cohort.read_timeseries("011_S_0002").shape == (20, 3)
    assert cohort.note("011_S_0002") == "No complaints; independent in daily life."
