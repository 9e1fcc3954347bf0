"""PLINK 1 binary genotypes (.bed/.bim/.fam) read with bed-reader.

Dosages count the minor allele of each SNP. PLINK's allele 1 (.bim column 5) is usually the minor
one, but not always (``plink --keep-allele-order``, sets written by other tools), so the minor allele
is decided per SNP from its frequency over every sample of the .bed, not the cohort's: the choice
then does not move with the ADNIMERGE table or a split. A SNP whose allele-1 frequency is above 0.5
counts allele 2 (a tie keeps allele 1); ``Genotypes.alleles`` shows the allele each SNP counts.
Missing calls stay NaN until preprocessing imputes them from the training split. The three files
must agree with each other: the .bed size is checked against the .fam and .bim counts before any
genotype is read.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from adfuse.errors import DataError

BED_MAGIC = bytes([0x6C, 0x1B, 0x01])  # PLINK 1 binary, SNP-major
FAM_COLUMNS = ("FID", "IID", "father", "mother", "sex", "phenotype")
BIM_COLUMNS = ("chrom", "snp", "cm", "pos", "allele_1", "allele_2")
FREQUENCY_BLOCK = 1 << 23  # genotypes (int8 bytes) read at once when counting alleles


@dataclass(frozen=True)
class Genotypes:
    """A validated PLINK set; genotypes are read on demand, only for the samples asked for."""

    bed: Path
    fam: pd.DataFrame
    bim: pd.DataFrame
    genes: dict[str, tuple[str, ...]] | None = None  # gene -> SNP ids, from <prefix>.genes.tsv

    @property
    def samples(self) -> list[str]:
        return self.fam["IID"].tolist()

    @property
    def snps(self) -> list[str]:
        return self.bim["snp"].tolist()

    def read(self, iids: list[str] | None = None, snps: list[str] | None = None) -> np.ndarray:
        """Minor-allele dosages [len(iids), len(snps)] as float32, NaN where the call is missing."""
        sample_index = _positions(self.fam["IID"], iids, self.bed.with_suffix(".fam").name, "IID")
        snp_index = _positions(self.bim["snp"], snps, self.bed.with_suffix(".bim").name, "SNP")
        flipped = self.alleles["flipped"].to_numpy()[snp_index]
        with self._open() as bed:
            dosages = bed.read(index=(sample_index, snp_index), dtype="float32")
        dosages[:, flipped] = 2 - dosages[:, flipped]  # NaN stays NaN
        return dosages

    @cached_property
    def alleles(self) -> pd.DataFrame:
        """Per SNP (index ``snp``, .bim order): the ``counted`` allele (the minor one over every
        sample of the .bed), the ``other`` one, the counted allele's ``frequency`` among the called
        genotypes, and ``flipped`` (True when the counted allele is allele 2 of the .bim).

        Computed once, streaming the .bed in blocks of SNPs (bounded memory for any cohort)."""
        allele_1_copies = np.zeros(len(self.bim), dtype=np.int64)
        called = np.zeros(len(self.bim), dtype=np.int64)
        block = max(1, FREQUENCY_BLOCK // max(1, len(self.fam)))
        with self._open() as bed:
            for start in range(0, len(self.bim), block):
                stop = min(start + block, len(self.bim))
                calls = bed.read(index=np.s_[:, start:stop], dtype="int8")  # missing: -127
                present = calls >= 0
                called[start:stop] = present.sum(axis=0)
                allele_1_copies[start:stop] = np.where(present, calls, 0).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            frequency_1 = allele_1_copies / (2.0 * called)  # NaN for a SNP without calls
        flipped = frequency_1 > 0.5  # a tie (and a SNP without calls) keeps allele 1
        allele_1, allele_2 = self.bim["allele_1"].to_numpy(), self.bim["allele_2"].to_numpy()
        return pd.DataFrame(
            {
                "counted": np.where(flipped, allele_2, allele_1),
                "other": np.where(flipped, allele_1, allele_2),
                "frequency": np.where(flipped, 1.0 - frequency_1, frequency_1),
                "flipped": flipped,
            },
            index=pd.Index(self.bim["snp"].to_numpy(), name="snp"),
        )

    @contextmanager
    def _open(self) -> Iterator:
        from bed_reader import open_bed

        try:
            with open_bed(
                self.bed,
                iid_count=len(self.fam),
                sid_count=len(self.bim),
                properties={"iid": self.fam["IID"].to_numpy(), "sid": self.bim["snp"].to_numpy()},
                num_threads=1,
            ) as bed:
                yield bed
        except Exception as exc:  # bed-reader raises plain ValueError/OSError on corrupt input
            raise DataError(f"cannot read genotypes ({exc})", file=self.bed.name) from None


def read_plink(prefix: Path) -> Genotypes | None:
    """The PLINK set at ``prefix`` (.bed/.bim/.fam); None when none of the three exists."""
    paths = {ext: prefix.with_name(prefix.name + ext) for ext in (".bed", ".bim", ".fam")}
    present = {ext: p.exists() for ext, p in paths.items()}
    if not any(present.values()):
        return None
    if not all(present.values()):
        missing = [paths[ext].name for ext, ok in present.items() if not ok]
        raise DataError(
            f"a PLINK set needs .bed, .bim and .fam together; {missing[0]} is missing",
            file=paths[".bed"].name,
        )
    fam = _read_whitespace(paths[".fam"], FAM_COLUMNS)
    bim = _read_whitespace(paths[".bim"], BIM_COLUMNS)
    for column in ("pos",):
        values = pd.to_numeric(bim[column], errors="coerce").astype("float64")
        numbers = values.to_numpy(na_value=np.nan)
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(numbers) | (numbers < 0) | (numbers >= 2**53) | (numbers % 1 != 0)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"line {row + 1}: position {bim[column].iloc[row]!r} is not a base-pair number",
                file=paths[".bim"].name,
                field="pos",
            )
        bim[column] = values.astype("int64")
    _check_unique(fam, ["IID"], paths[".fam"].name, "sample IID")  # IID is the PTID
    _check_unique(bim, ["snp"], paths[".bim"].name, "SNP")
    _check_bed(paths[".bed"], len(fam), len(bim), paths)
    genes = read_gene_annotation(prefix.with_name(prefix.name + ".genes.tsv"), set(bim["snp"]))
    return Genotypes(bed=paths[".bed"], fam=fam, bim=bim, genes=genes)


def read_gene_annotation(path: Path, snps: set[str]) -> dict[str, tuple[str, ...]] | None:
    """Optional SNP -> gene table (TSV: snp, gene); gene -> its SNPs in file order."""
    from adfuse.data.tables import read_delimited

    if not path.exists():
        return None
    table = read_delimited(path, "\t", path.name)
    for column in ("snp", "gene"):
        if column not in table:
            raise DataError(f"required column {column!r} is missing", file=path.name, field=column)
    unknown = table.loc[~table["snp"].isin(snps), "snp"]
    if len(unknown):
        raise DataError(f"SNP {unknown.iloc[0]!r} is not in the .bim", file=path.name, field="snp")
    if table["snp"].duplicated().any():
        repeated = table.loc[table["snp"].duplicated(), "snp"].iloc[0]
        raise DataError(f"SNP {repeated!r} appears more than once", file=path.name, field="snp")
    genes: dict[str, list[str]] = {}
    for snp, gene in zip(table["snp"], table["gene"].fillna("").str.strip(), strict=True):
        if gene:
            genes.setdefault(gene, []).append(snp)
    return {gene: tuple(members) for gene, members in genes.items()}


def _read_whitespace(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise DataError("not a text file", file=path.name) from None
    rows = [line.split() for line in lines if line.strip()]
    if not rows:
        raise DataError("the file is empty", file=path.name)
    for number, row in enumerate(rows, start=1):
        if len(row) != len(columns):
            raise DataError(
                f"line {number}: {len(row)} fields, expected {len(columns)} ({' '.join(columns)})",
                file=path.name,
            )
    return pd.DataFrame(rows, columns=list(columns), dtype="str")


def _check_unique(table: pd.DataFrame, key: list[str], file: str, what: str) -> None:
    duplicated = table.duplicated(key, keep=False)
    if duplicated.any():
        value = " ".join(table.loc[duplicated, key].iloc[0])
        raise DataError(f"{what} {value!r} appears more than once", file=file)


def _check_bed(bed: Path, n_samples: int, n_snps: int, paths: dict[str, Path]) -> None:
    size = bed.stat().st_size
    with open(bed, "rb") as handle:
        magic = handle.read(3)
    if magic != BED_MAGIC:
        raise DataError(
            f"not a PLINK 1 SNP-major .bed (first bytes {magic.hex(' ')}, expected 6c 1b 01)",
            file=bed.name,
        )
    expected = 3 + n_snps * ((n_samples + 3) // 4)
    if size != expected:
        raise DataError(
            f"{size} bytes, expected {expected} for {n_samples} samples ({paths['.fam'].name}) "
            f"x {n_snps} SNPs ({paths['.bim'].name}): the three files disagree or the .bed is "
            "truncated",
            file=bed.name,
        )


def _positions(ids: pd.Series, wanted: list[str] | None, file: str, what: str) -> np.ndarray:
    if wanted is None:
        return np.arange(len(ids))
    positions = pd.Index(ids).get_indexer(wanted)
    if (positions < 0).any():
        missing = wanted[int(np.flatnonzero(positions < 0)[0])]
        raise DataError(f"{what} {missing!r} is not in the file", file=file)
    return positions
