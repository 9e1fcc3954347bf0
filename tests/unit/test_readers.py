"""Every reader on a hand-made dataset: what it returns, and each bad input it must refuse."""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import adfuse
from adfuse.data.cohort import DatasetWarning
from adfuse.errors import ConfigError, DataError
from tests.tiny_dataset import AFFINE, SHAPE, SUBJECTS, write_tiny_dataset

T1 = "rawdata/sub-ADNI011S0002/ses-M000/anat/sub-ADNI011S0002_ses-M000_T1w.nii.gz"
GZIPPED_TEXT = gzip.compress(b"hello, this is plain text and not a NIfTI header " * 20)
FMRI = "rawdata/sub-ADNI011S0002/ses-M000/func/sub-ADNI011S0002_ses-M000_task-rest_timeseries.tsv"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny") / "dataset")


@pytest.fixture()
def tiny(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "dataset"
    shutil.copytree(pristine, copy)
    return copy


# --------------------------------------------------------------------------- what readers return
def test_cohort_contents(tiny):
    cohort = adfuse.load_cohort(tiny)
    assert cohort.subjects == sorted(SUBJECTS)
    assert list(cohort.availability.columns) == [
        "clinical",
        "genotype",
        "t1",
        "amyloid",
        "fmri",
        "notes",
    ]
    assert cohort.availability["genotype"].tolist() == [True, True, True, False]
    assert cohort.availability["amyloid"].tolist() == [True, False, True, False]
    assert cohort.availability["notes"].tolist() == [True, True, False, False]
    visits = cohort.visit_availability
    assert (
        visits.loc[("011_S_0003", "m24"), "notes"] and not visits.loc[("011_S_0003", "m24"), "t1"]
    )
    table = cohort.table.set_index(["PTID", "VISCODE"])
    assert table.loc[("011_S_0002", "m06"), "MONTH"] == 6
    assert pd.isna(table.loc[("022_S_0005", "bl"), "MMSE"])  # blank is missing, not an error
    # censored CSF values are kept at their bound
    assert table.loc[("011_S_0002", "bl"), "ABETA"] == 1700
    assert table.loc[("022_S_0004", "bl"), "ABETA"] == 200


def test_spec(tiny):
    spec = adfuse.load_cohort(tiny).spec
    assert spec["t1"].kind == "volume" and spec["t1"].shape == SHAPE
    assert spec["t1"].feature_names == ("lh-hippocampus", "rh-hippocampus", "precuneus")
    assert spec["fmri"].shape == (20, 3)
    assert spec["genotype"].shape == (4,) and spec["genotype"].feature_names[0] == "rs429358"
    assert spec["genotype"].groups == {
        "APOE": ("rs429358", "rs7412"),
        "BIN1": ("rs744373",),
        "CLU": ("rs11136000",),
    }
    clinical = spec["clinical"]
    assert "MMSE" in clinical.feature_names and "PTGENDER" in clinical.feature_names
    for not_a_feature in ("RID", "PTID", "VISCODE", "DX", "DX_bl", "Month", "EXAMDATE"):
        assert not_a_feature not in clinical.feature_names
    assert clinical.categories == {"PTGENDER": ("Female", "Male")}


def test_on_demand_readers(tiny):
    cohort = adfuse.load_cohort(tiny)
    volume = cohort.read_volume("t1", "011_S_0002")
    assert volume.shape == SHAPE and volume.dtype == np.float32
    np.testing.assert_array_equal(
        cohort.read_genotypes(["011_S_0003", "011_S_0002"]),
        np.array([[1, 1, np.nan, 2], [0, 1, 2, 0]], dtype=np.float32),
    )
    assert cohort.read_timeseries("011_S_0002").shape == (20, 3)
    assert cohort.note("011_S_0003", "m24") == "Needs help with finances."
    assert cohort.note("022_S_0005") is None
    with pytest.raises(DataError, match="subject 022_S_0005: amyloid: no amyloid file"):
        cohort.read_volume("amyloid", "022_S_0005")


def test_bom_is_accepted(tiny):
    path = tiny / "ADNIMERGE.csv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert len(adfuse.load_cohort(tiny).subjects) == 4


def test_absent_modalities_are_normal(tiny):
    for name in (
        "genotypes.bed",
        "genotypes.bim",
        "genotypes.fam",
        "genotypes.genes.tsv",
        "notes.jsonl",
    ):
        (tiny / name).unlink()
    shutil.rmtree(tiny / "rawdata")
    cohort = adfuse.load_cohort(tiny)
    assert list(cohort.availability.columns) == ["clinical"]


def test_extra_files_only_warn(tiny):
    extra = tiny / "rawdata" / "sub-ADNI999S9999" / "ses-M000" / "anat"
    extra.mkdir(parents=True)
    shutil.copy(tiny / T1, extra / "sub-ADNI999S9999_ses-M000_T1w.nii.gz")
    unknown_session = tiny / "rawdata" / "sub-ADNI011S0002" / "ses-M048" / "anat"
    unknown_session.mkdir(parents=True)
    with pytest.warns(DatasetWarning) as caught:
        cohort = adfuse.load_cohort(tiny)
    messages = " | ".join(str(w.message) for w in caught)
    assert "1 rawdata subject folders match no PTID" in messages
    assert "1 session folders match no visit" in messages
    assert len(cohort.subjects) == 4


def test_atlas_labels_without_voxels_only_warn(tiny):
    """A label table may list regions the map does not use (a shared lookup table): they are
    dropped, so that every region of the spec has voxels."""
    path = tiny / "atlas" / "dseg.tsv"
    path.write_text(path.read_text() + "4\tcuneus\n5\tthalamus\n")
    with pytest.warns(
        DatasetWarning,
        match=r"atlas/dseg.tsv: rows whose label has no voxel in dseg.nii.gz are ignored: 4, 5$",
    ):
        cohort = adfuse.load_cohort(tiny)
    assert cohort.atlas.indices == [1, 2, 3]
    assert cohort.spec["t1"].feature_names == ("lh-hippocampus", "rh-hippocampus", "precuneus")


def test_unreadable_nifti_keeps_nibabel_quiet(tiny, caplog):
    """nibabel logs its header checks before it raises; the user sees only our DataError."""
    import logging

    path = tiny / T1
    path.write_bytes(GZIPPED_TEXT)
    nibabel_logger = logging.getLogger("nibabel.global")
    with caplog.at_level(logging.DEBUG), pytest.raises(DataError, match="subject 011_S_0002: t1"):
        adfuse.load_cohort(tiny)
    assert not [r for r in caplog.records if r.name.startswith("nibabel")], caplog.text
    assert not nibabel_logger.disabled and not logging.getLogger("nibabel").disabled  # restored


def test_unreadable_nifti_is_one_line_on_stderr(tiny):
    """Through the console script: the process's stderr is the one error line, exit 3."""
    from tests.reliability.helpers import run_script

    (tiny / T1).write_bytes(GZIPPED_TEXT)
    result = run_script(["info", tiny])
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {T1}: subject 011_S_0002: t1: not a readable NIfTI file")


def test_legacy_dx_codes_are_mapped(tiny):
    path = tiny / "ADNIMERGE.csv"
    path.write_text(path.read_text().replace(",CN,CN,74.3", ",CN,NL,74.3"))
    cohort = adfuse.load_cohort(tiny)
    assert cohort.baseline.loc["011_S_0002", "DX"] == "CN"


# --------------------------------------------------------------------------- bad inputs
def _replace(name: str, old: str, new: str, count: int = 1) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        path = root / name
        text = path.read_text(encoding="utf-8")
        assert old in text, old
        path.write_text(text.replace(old, new, count), encoding="utf-8")

    return change


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda root: (root / name).write_bytes(data)


def _truncate(name: str, keep: int) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        path = root / name
        path.write_bytes(path.read_bytes()[:keep])

    return change


def _nifti(name: str, data: np.ndarray, affine: np.ndarray = AFFINE) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        import nibabel as nib

        nib.Nifti1Image(data, affine).to_filename(root / name)

    return change


def _csv_columns(drop: list[str]) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        path = root / "ADNIMERGE.csv"
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        table.drop(columns=drop).to_csv(path, index=False)

    return change


def _remove(name: str) -> Callable[[Path], None]:
    return lambda root: (root / name).unlink()


def _fam_line(line: str) -> Callable[[Path], None]:
    def change(root: Path) -> None:
        path = root / "genotypes.fam"
        path.write_text(path.read_text() + line + "\n")

    return change


BAD_LOAD = {
    "no ADNIMERGE": (_remove("ADNIMERGE.csv"), DataError, r"^ADNIMERGE.csv: the file is missing"),
    "empty ADNIMERGE": (
        _write("ADNIMERGE.csv", b""),
        DataError,
        r"^ADNIMERGE.csv: the file is empty",
    ),
    "no VISCODE column": (
        _csv_columns(["VISCODE"]),
        DataError,
        r"^ADNIMERGE.csv: VISCODE: required column VISCODE",
    ),
    "no DX columns": (
        _csv_columns(["DX", "DX_bl"]),
        DataError,
        r"required column DX_bl or DX is missing",
    ),
    "no id columns": (_csv_columns(["RID", "PTID"]), DataError, r"required column RID or PTID"),
    "semicolons": (
        lambda r: (r / "ADNIMERGE.csv").write_text(
            (r / "ADNIMERGE.csv").read_text().replace(",", ";")
        ),
        DataError,
        r"^ADNIMERGE.csv: expected a comma-separated header \(found semicolons\)",
    ),
    "tabs": (
        lambda r: (r / "ADNIMERGE.csv").write_text(
            (r / "ADNIMERGE.csv").read_text().replace(",", "\t")
        ),
        DataError,
        r"expected a comma-separated header \(found tabs\)",
    ),
    "latin-1": (
        lambda r: (r / "ADNIMERGE.csv").write_bytes(
            (r / "ADNIMERGE.csv").read_text().replace("Male,16", "Mâle,16", 1).encode("latin-1")
        ),
        DataError,
        r"^ADNIMERGE.csv: not UTF-8 text",
    ),
    "MMSE not a number": (
        _replace("ADNIMERGE.csv", ",Male,16,0,28,", ",Male,16,0,abc,"),
        DataError,
        r"^ADNIMERGE.csv: subject 011_S_0002: MMSE: VISCODE 'bl': MMSE='abc' is not a number",
    ),
    "MMSE above 30": (
        _replace("ADNIMERGE.csv", ",Male,16,0,28,", ",Male,16,0,31,"),
        DataError,
        r"subject 011_S_0002: MMSE: .*outside its range \(0–30\)",
    ),
    "negative age": (
        _replace("ADNIMERGE.csv", "74.3", "-74.3"),
        DataError,
        r"subject 011_S_0002: AGE: .*AGE='-74.3' is outside its range \(> 0\)",
    ),
    "zero age": (
        _replace("ADNIMERGE.csv", "81.3", "0"),
        DataError,
        r"subject 011_S_0003: AGE: .*outside",
    ),
    "APOE4 of 3": (
        _replace("ADNIMERGE.csv", "Female,16,2,", "Female,16,3,"),
        DataError,
        r"subject 022_S_0005: APOE4: ",
    ),
    "infinite CDRSB": (
        _replace("ADNIMERGE.csv", ",0,10.67,", ",inf,10.67,"),
        DataError,
        r"subject 011_S_0002: CDRSB: VISCODE 'bl': CDRSB='inf' is not finite",
    ),
    "NaN text in ADAS13": (
        _replace("ADNIMERGE.csv", ",31,741.5", ",NaN,741.5"),
        DataError,
        r"subject 011_S_0003: ADAS13: .*'NaN' is not a number",
    ),
    "DX_bl not an ADNI code": (
        _replace("ADNIMERGE.csv", ",LMCI,MCI,", ",MCI,MCI,"),
        DataError,
        r"subject 022_S_0004: DX_bl: VISCODE 'bl': DX_bl='MCI' is not a code ADNI uses",
    ),
    "DX not an ADNI code": (
        _replace("ADNIMERGE.csv", ",AD,Dementia,81.3", ",AD,Alzheimer,81.3"),
        DataError,
        r"subject 011_S_0003: DX: .*'Alzheimer'",
    ),
    "gender code": (
        _replace("ADNIMERGE.csv", ",Female,10,", ",F,10,"),
        DataError,
        r"subject 022_S_0004: PTGENDER: ",
    ),
    "bad date": (
        _replace("ADNIMERGE.csv", "2005-11-08", "08/31/2005x"),
        DataError,
        r"subject 022_S_0004: EXAMDATE: .*is not a date",
    ),
    "duplicate visit": (
        lambda r: (r / "ADNIMERGE.csv").write_text(
            (r / "ADNIMERGE.csv").read_text()
            + "5,022_S_0005,bl,2005-11-10,EMCI,MCI,73.7,Female,16,2,,1.5,14,,0\n"
        ),
        DataError,
        r"subject 022_S_0005: VISCODE: VISCODE 'bl' appears 2 times",
    ),
    "DX_bl changes": (
        _replace("ADNIMERGE.csv", "2006-03-06,CN,CN", "2006-03-06,SMC,CN"),
        DataError,
        r"subject 011_S_0002: DX_bl: DX_bl differs between visits \(CN, SMC\)",
    ),
    "blank PTID": (
        _replace("ADNIMERGE.csv", "5,022_S_0005,", "5,,"),
        DataError,
        r"line 7: blank subject id",
    ),
    "blank VISCODE": (
        _replace("ADNIMERGE.csv", "022_S_0005,bl,", "022_S_0005,,"),
        DataError,
        r"subject 022_S_0005: VISCODE: blank",
    ),
    "ragged row": (
        lambda r: (r / "ADNIMERGE.csv").write_text(
            (r / "ADNIMERGE.csv").read_text() + "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17\n"
        ),
        DataError,
        r"^ADNIMERGE.csv: malformed table",
    ),
    "bim missing": (
        _remove("genotypes.bim"),
        DataError,
        r"genotypes.bed: a PLINK set needs .bed, .bim and .fam together; genotypes.bim is missing",
    ),
    "bed truncated": (
        _truncate("genotypes.bed", 5),
        DataError,
        r"genotypes.bed: 5 bytes, expected 7 for 3 samples",
    ),
    "fam disagrees with bed": (
        # 3 -> 5 samples: one more byte per SNP (a .bed packs 4 samples a byte)
        _fam_line("022_S_0005 022_S_0005 0 0 2 -9\nX Y 0 0 2 -9"),
        DataError,
        r"genotypes.bed: 7 bytes, expected 11 for 5 samples \(genotypes.fam\) x 4 SNPs",
    ),
    "bed not PLINK": (
        _write("genotypes.bed", b"\x00\x01\x02\x03\x04\x05\x06"),
        DataError,
        r"genotypes.bed: not a PLINK 1 SNP-major .bed",
    ),
    "fam wrong columns": (
        _fam_line("a b c"),
        DataError,
        r"genotypes.fam: line 4: 3 fields, expected 6",
    ),
    "fam duplicate IID": (
        _fam_line("X 011_S_0002 0 0 1 -9"),
        DataError,
        r"genotypes.fam: sample IID '011_S_0002' appears more than once",
    ),
    "bim duplicate SNP": (
        _replace("genotypes.bim", "rs7412", "rs429358"),
        DataError,
        r"genotypes.bim: SNP 'rs429358' appears more than once",
    ),
    "bim position": (
        _replace("genotypes.bim", "44908684", "pos?"),
        DataError,
        r"genotypes.bim: pos: line 1: position 'pos\?'",
    ),
    "gene annotation names an unknown SNP": (
        _replace("genotypes.genes.tsv", "rs744373", "rs0000001"),
        DataError,
        r"^genotypes.genes.tsv: snp: SNP 'rs0000001' is not in the .bim",
    ),
    "NIfTI corrupt": (
        _write(T1, b"not a nifti file at all" * 20),
        DataError,
        rf"^{T1}: subject 011_S_0002: t1: not a readable NIfTI file",
    ),
    "NIfTI gzip of text": (
        _write(T1, GZIPPED_TEXT),
        DataError,
        rf"^{T1}: subject 011_S_0002: t1: not a readable NIfTI file \(HeaderDataError",
    ),
    "NIfTI empty": (
        _write(T1, b""),
        DataError,
        rf"^{T1}: subject 011_S_0002: t1: not a readable NIfTI file",
    ),
    "NIfTI 4D": (
        _nifti(T1, np.zeros((*SHAPE, 3), np.float32)),
        DataError,
        rf"^{T1}: subject 011_S_0002: shape: expected a 3D volume, found 4D",
    ),
    "NIfTI 2D": (_nifti(T1, np.zeros(SHAPE[:2], np.float32)), DataError, r"found 2D shape"),
    "NIfTI off the atlas grid": (
        _nifti(T1, np.zeros((8, 9, 11), np.float32)),
        DataError,
        rf"^{T1}: subject 011_S_0002: shape: shape \(8, 9, 11\) does not match the atlas \(8, 9, 10\)",
    ),
    "NIfTI other space": (
        _nifti(T1, np.zeros(SHAPE, np.float32), np.diag([2.0, 2.0, 2.0, 1.0])),
        DataError,
        rf"^{T1}: subject 011_S_0002: affine: affine differs from the atlas",
    ),
    "time series header differs": (
        _replace(
            "rawdata/sub-ADNI011S0003/ses-M000/func/sub-ADNI011S0003_ses-M000_task-rest_timeseries.tsv",
            "precuneus",
            "cuneus",
        ),
        DataError,
        r"subject 011_S_0003: header: .*differ",
    ),
    "time series not tab-separated": (
        _replace(FMRI, "\t", ",", count=-1),
        DataError,
        r"expected a tab-separated header",
    ),
    "notes not JSON": (
        lambda r: (r / "notes.jsonl").write_text((r / "notes.jsonl").read_text() + "{oops\n"),
        DataError,
        r"^notes.jsonl: line 4: not valid JSON",
    ),
    "notes missing field": (
        lambda r: (r / "notes.jsonl").write_text('{"PTID": "011_S_0002", "text": "x"}\n'),
        DataError,
        r"^notes.jsonl: subject 011_S_0002: VISCODE: line 1: VISCODE must be a non-empty string",
    ),
    "notes duplicate": (
        lambda r: (r / "notes.jsonl").write_text((r / "notes.jsonl").read_text() * 2),
        DataError,
        r"^notes.jsonl: subject 011_S_0002: VISCODE: VISCODE 'bl' has more than one note",
    ),
    "atlas table without names": (
        _replace("atlas/dseg.tsv", "index\tname", "index\tlabel"),
        DataError,
        r"atlas/dseg.tsv: name: required column 'name' is missing",
    ),
    "atlas table missing": (
        _remove("atlas/dseg.tsv"),
        DataError,
        r"atlas/dseg.tsv: the atlas needs both",
    ),
    "atlas table lacks a label of the map": (
        _replace("atlas/dseg.tsv", "3\tprecuneus\n", ""),
        DataError,
        r"^atlas/dseg.tsv: index: labels of dseg.nii.gz without a row: 3; every label of the map",
    ),
    "atlas map is all background": (
        _nifti("atlas/dseg.nii.gz", np.zeros(SHAPE, np.uint8)),
        DataError,
        r"^atlas/dseg.nii.gz: the label map has no region",
    ),
    "rawdata folders match no PTID": (
        lambda r: [d.rename(d.with_name(d.name.replace("ADNI", ""))) for d in r.glob("rawdata/*")],
        DataError,
        r"^rawdata/: none of the 4 subject folders \(e.g. 'sub-011S0002'\) matches a PTID of "
        r"ADNIMERGE.csv: .*\(here: 011_S_0002 -> sub-ADNI011S0002\)",
    ),
    "toml unknown key": (
        _write("adfuse.toml", b'[files]\nadnimerg = "x.csv"\n'),
        ConfigError,
        r"^adfuse.toml: unknown key 'files.adnimerg'",
    ),
    "toml path escapes": (
        _write("adfuse.toml", b'[files]\nadnimerge = "../../etc/passwd"\n'),
        ConfigError,
        r"adfuse.toml: files.adnimerge = '../../etc/passwd' points outside the dataset folder",
    ),
    "toml not TOML": (
        _write("adfuse.toml", b"[files\n"),
        ConfigError,
        r"^adfuse.toml: not valid TOML",
    ),
    "toml maps a missing column": (
        _write("adfuse.toml", b'[adnimerge.columns]\nPTID = "subject"\n'),
        DataError,
        r"ADNIMERGE.csv: subject: adfuse.toml maps PTID to column 'subject', which the file lacks",
    ),
    "dataset folder missing": (lambda r: shutil.rmtree(r), DataError, r"not a dataset folder"),
}


@pytest.mark.parametrize("case", list(BAD_LOAD), ids=list(BAD_LOAD))
def test_bad_input_is_refused_with_a_precise_message(tiny, case):
    change, error, pattern = BAD_LOAD[case]
    change(tiny)
    with pytest.raises(error, match=pattern) as caught:
        adfuse.load_cohort(tiny)
    assert "\n" not in str(caught.value)


def test_nan_voxel_is_refused_when_the_volume_is_read(tiny):
    volume = np.ones(SHAPE, np.float32)
    volume[2, 3, 4] = np.nan
    _nifti(T1, volume)(tiny)
    cohort = adfuse.load_cohort(tiny)  # headers are fine
    with pytest.raises(
        DataError, match=rf"{T1}: subject 011_S_0002: voxels: voxel \(2, 3, 4\) is nan"
    ):
        cohort.read_volume("t1", "011_S_0002")


def test_truncated_volume_is_refused_when_read(tiny):
    path = tiny / T1
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    cohort = adfuse.load_cohort(tiny)
    with pytest.raises(DataError, match=rf"{T1}: subject 011_S_0002: cannot read the voxels"):
        cohort.read_volume("t1", "011_S_0002")


@pytest.mark.parametrize(
    "value, shown",
    [
        ("abc", "'abc'"),
        ("nan", "'nan'"),
        ("-inf", "'-inf'"),
        ("1e999", "'1e999'"),
        ("", "an empty field"),
    ],
)
def test_non_numeric_time_point_is_refused_when_read(tiny, value, shown):
    path = tiny / FMRI
    lines = path.read_text().splitlines()
    lines[3] = value + "\t" + lines[3].split("\t", 1)[1]
    path.write_text("\n".join(lines) + "\n")
    cohort = adfuse.load_cohort(tiny)
    with pytest.raises(
        DataError,
        match=rf"subject 011_S_0002: lh-hippocampus: time point 3: {shown} is not a finite",
    ):
        cohort.read_timeseries("011_S_0002")


def test_time_series_values_may_carry_blanks(tiny):
    path = tiny / FMRI
    before = adfuse.load_cohort(tiny).read_timeseries("011_S_0002")
    lines = path.read_text().splitlines()
    lines[1:] = ["\t".join(f" {field} " for field in line.split("\t")) for line in lines[1:]]
    path.write_text("\n".join(lines) + "\n")
    after = adfuse.load_cohort(tiny).read_timeseries("011_S_0002")
    assert after.dtype == np.float32 and np.array_equal(before, after)
