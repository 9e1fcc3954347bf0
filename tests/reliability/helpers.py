"""Shared pieces of the reliability tests: a small imaged cohort, the CLI run in-process through
``adfuse.cli.main`` (its real error mapping) or as the installed console script, and folder
snapshots to prove that a failed command wrote nothing."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.tiny_dataset import AFFINE, REGIONS, SHAPE
from tests.unit.cohort_factory import BL_OF_DX, DX_OF_DX_BL, subject_rows, write_adnimerge

ADFUSE = Path(sys.executable).with_name("adfuse")  # the console script: adfuse.cli:main


def imaged_cohort(root: Path, per_class: int = 10) -> Path:
    """``per_class`` CN, MCI and AD subjects (bl + m24 visits), each with a T1 volume and an fMRI
    series at bl on a 3-region atlas of the tiny dataset's grid; written without the generator."""
    import nibabel as nib

    rows, ptids = [], []
    rng = np.random.default_rng(0)
    for number in range(3 * per_class):
        dx = ("CN", "MCI", "AD")[number % 3]
        ptid = f"{100 + number % 7:03d}_S_{number + 1:04d}"
        base = {"CN": 0.0, "MCI": 1.5, "AD": 4.5}[dx] + (number % 4) * 0.5
        visits = [("bl", DX_OF_DX_BL[BL_OF_DX[dx]], base), ("m24", DX_OF_DX_BL[BL_OF_DX[dx]], base)]
        age = 60.0 + (number * 7) % 25
        rows += subject_rows(number + 1, ptid, BL_OF_DX[dx], age, "Female", visits)
        ptids.append(ptid)
    write_adnimerge(root, rows)
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[1:4, 1:4, 1:4], labels[4:7, 1:4, 1:4], labels[2:6, 5:8, 5:9] = 1, 2, 3
    (root / "atlas").mkdir()
    nib.Nifti1Image(labels, AFFINE).to_filename(root / "atlas" / "dseg.nii.gz")
    table = ["index\tname"] + [f"{i}\t{name}" for i, name in enumerate(REGIONS, start=1)]
    (root / "atlas" / "dseg.tsv").write_text("\n".join(table) + "\n", encoding="utf-8")
    for ptid in ptids:
        bids = "ADNI" + ptid.replace("_", "")
        session = root / "rawdata" / f"sub-{bids}" / "ses-M000"
        stem = f"sub-{bids}_ses-M000"
        (session / "anat").mkdir(parents=True)
        (session / "func").mkdir()
        volume = (rng.random(SHAPE) * 100 + 50 * (labels > 0)).astype(np.float32)
        nib.Nifti1Image(volume, AFFINE).to_filename(session / "anat" / f"{stem}_T1w.nii.gz")
        series = rng.standard_normal((12, len(REGIONS)))
        lines = ["\t".join(REGIONS)] + ["\t".join(f"{v:.4f}" for v in row) for row in series]
        (session / "func" / f"{stem}_task-rest_timeseries.tsv").write_text("\n".join(lines) + "\n")
    return root


def synthesised(factory, n_subjects: int, seed: int, modalities: tuple[str, ...]) -> Path:
    """A generated cohort (3 mm images) with only ``modalities``, under a pytest tmp factory."""
    from adfuse.data.synth import generate

    root = factory.mktemp(f"synth-{n_subjects}-{seed}") / "cohort"
    return generate(root, n_subjects=n_subjects, seed=seed, modalities=modalities)


def t1_of(root: Path, ptid: str) -> Path:
    bids = "ADNI" + ptid.replace("_", "")
    return (
        root / "rawdata" / f"sub-{bids}" / "ses-M000" / "anat" / f"sub-{bids}_ses-M000_T1w.nii.gz"
    )


def fmri_of(root: Path, ptid: str) -> Path:
    bids = "ADNI" + ptid.replace("_", "")
    name = f"sub-{bids}_ses-M000_task-rest_timeseries.tsv"
    return root / "rawdata" / f"sub-{bids}" / "ses-M000" / "func" / name


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file and folder under ``root`` (hidden ones included)."""
    if not root.exists():
        return {}
    out = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        out[relative] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "/"
    return out


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    error: BaseException | None  # what escaped the typer app (an AdfuseError, or SystemExit)

    @property
    def lines(self) -> list[str]:
        """stderr's lines other than warnings (each a line of its own: ``warning: ...``)."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return [line for line in lines if not line.startswith("warning: ")]


def run_main(args: list[str], monkeypatch, capsys) -> Outcome:
    """``adfuse ARGS`` in this process through ``adfuse.cli.main`` (exit code, stderr as a user
    sees them), recording the exception that reached main's error mapping."""
    from adfuse import cli

    real_app, seen = cli.app, {}

    def recording_app() -> None:
        try:
            real_app()
        except BaseException as error:
            seen["error"] = error
            raise

    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr(cli, "app", recording_app)
        patch.setattr(sys, "argv", ["adfuse", *map(str, args)])
        try:
            cli.main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err, seen.get("error"))


def run_script(args: list[str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """The installed ``adfuse`` console script in a subprocess (the real exit code)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run(
        [str(ADFUSE), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        **kwargs,
    )
