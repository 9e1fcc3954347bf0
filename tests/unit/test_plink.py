"""PLINK dosages count each SNP's minor allele, whichever .bim column holds it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from adfuse.data import plink
from adfuse.data.plink import read_plink
from tests.real_data.conftest import SHARED_DATA

NAN = np.nan
# allele-1 counts of 6 samples: A1 minor, A1 major, a tie, A1 major with missing calls
ALLELE_1_COUNTS = np.array(
    [
        [0, 2, 1, 2],
        [1, 2, 1, NAN],
        [0, 1, 1, 2],
        [0, 2, 1, 1],
        [1, 1, 1, 2],
        [0, 2, 1, NAN],
    ],
    dtype=np.float32,
)
MINOR_COUNTS = np.array(
    [
        [0, 0, 1, 0],
        [1, 0, 1, NAN],
        [0, 1, 1, 0],
        [0, 0, 1, 1],
        [1, 1, 1, 0],
        [0, 0, 1, NAN],
    ],
    dtype=np.float32,
)


def _write_set(prefix: Path, counts: np.ndarray, allele_1, allele_2, **properties) -> Path:
    from bed_reader import to_bed

    n, m = counts.shape
    iids = properties.pop("iid", [f"S{i}" for i in range(n)])
    to_bed(
        prefix.with_suffix(".bed"),
        counts,
        properties={
            "fid": iids,
            "iid": iids,
            "sid": properties.pop("sid", [f"rs{j}" for j in range(m)]),
            "allele_1": allele_1,
            "allele_2": allele_2,
            **properties,
        },
    )
    return prefix


def test_dosages_count_the_minor_allele(tmp_path):
    prefix = _write_set(tmp_path / "set", ALLELE_1_COUNTS, list("ACGT"), list("GTAC"))
    genotypes = read_plink(prefix)
    np.testing.assert_array_equal(genotypes.read(), MINOR_COUNTS)  # NaN stays NaN
    alleles = genotypes.alleles
    assert alleles.index.tolist() == ["rs0", "rs1", "rs2", "rs3"]
    assert alleles["flipped"].tolist() == [False, True, False, True]  # the tie keeps allele 1
    assert alleles["counted"].tolist() == ["A", "T", "G", "C"]
    assert alleles["other"].tolist() == ["G", "C", "A", "T"]
    np.testing.assert_allclose(alleles["frequency"], [2 / 12, 2 / 12, 0.5, 1 / 8])
    # a subset is flipped by the frequency over the whole .bed, whatever the subset holds
    part = genotypes.read(["S4", "S0"], ["rs3", "rs1"])
    np.testing.assert_array_equal(part, MINOR_COUNTS[[4, 0]][:, [3, 1]])


def test_swapped_alleles_give_the_same_dosages(tmp_path):
    """A set written with A1 = the major allele (genotypes 2 - A1 count) reads as the original."""
    rng = np.random.default_rng(0)
    counts = rng.binomial(2, rng.uniform(0.02, 0.98, 40), size=(51, 40)).astype(np.float32)
    counts[rng.random(counts.shape) < 0.05] = NAN
    one, two = ["A"] * 40, ["G"] * 40
    original = read_plink(_write_set(tmp_path / "original", counts, one, two)).read()
    swapped = read_plink(_write_set(tmp_path / "swapped", 2 - counts, two, one))
    frequency = np.nanmean(counts, axis=0) / 2
    assert 0 < (frequency > 0.5).sum() < 40 and not (frequency == 0.5).any()
    np.testing.assert_array_equal(swapped.read(), original)
    assert swapped.alleles["counted"].tolist() == np.where(frequency > 0.5, "G", "A").tolist()


def test_allele_frequencies_stream_in_blocks(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    counts = rng.binomial(2, rng.uniform(0.05, 0.95, 7), size=(9, 7)).astype(np.float32)
    counts[rng.random(counts.shape) < 0.1] = NAN
    prefix = _write_set(tmp_path / "set", counts, ["A"] * 7, ["C"] * 7)
    whole = read_plink(prefix).alleles
    monkeypatch.setattr(plink, "FREQUENCY_BLOCK", 2 * 9)  # two SNPs a block, one left over
    blocks = read_plink(prefix).alleles
    assert blocks.equals(whole)
    a1 = np.nanmean(counts, axis=0) / 2
    np.testing.assert_allclose(whole["frequency"], np.minimum(a1, 1 - a1), rtol=1e-6)


@pytest.mark.real_data
def test_real_set_counts_the_minor_allele(tmp_path):
    """snpStats' sample set: allele 1 is minor or tied everywhere, so our dosages are bed-reader's
    allele-1 counts; rewritten with the alleles swapped they stay the same, except at the one
    exact tie (SNP 18, frequency 0.5), where allele 1 is kept, i.e. now the other allele."""
    from bed_reader import open_bed

    sample = SHARED_DATA / "plink" / "sample"
    if not sample.with_suffix(".bed").exists():
        pytest.skip(f"the public test files are not at {SHARED_DATA}")
    with open_bed(sample.with_suffix(".bed")) as bed:
        counts = bed.read()
        swap = {"allele_1": bed.allele_2, "allele_2": bed.allele_1}
        kept = {key: getattr(bed, key) for key in ("chromosome", "sid", "bp_position")}
    frequency = np.nansum(counts, axis=0) / (2 * (~np.isnan(counts)).sum(axis=0))
    expected = np.where(frequency > 0.5, 2 - counts, counts)
    genotypes = read_plink(sample)
    np.testing.assert_array_equal(genotypes.read(), expected)
    tie = frequency == 0.5
    assert np.flatnonzero(tie).tolist() == [17]

    swapped = read_plink(
        _write_set(tmp_path / "swapped", 2 - counts, iid=genotypes.samples, **swap, **kept)
    )
    dosages = swapped.read()
    np.testing.assert_array_equal(dosages[:, ~tie], expected[:, ~tie])
    np.testing.assert_array_equal(dosages[:, tie], 2 - expected[:, tie])
    assert swapped.alleles["flipped"].sum() == 19
