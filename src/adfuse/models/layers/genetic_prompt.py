"""Genetic prompting (R-GenIMA §4.2.2): SNP quality control, and SNPs written as structured text.

- ``snp_qc``: minor-allele frequency and the Hardy-Weinberg exact test (Wigginton, Cutler & Abecasis
  2005, Am J Hum Genet 76:887, PLINK's ``--hwe``) per SNP, on the dosages of the training subjects.
- ``serialise``: one subject's SNPs grouped by gene, as text (VCF genotype notation, 1 = the allele
  the reader counts: the minor allele of the .bed's samples, ``cohort.genotypes.alleles``)::

      APOE: rs429358 0/1, rs7412 0/0; BIN1: rs744373 1/1;

  or, compact (``snp_ids=False``: the SNP ids cost ~5 WordPiece tokens each, so that every gene of
  a panel fits in the text), ``APOE: 0/1, 0/0; BIN1: 1/1;`` (a gene's SNPs in a fixed order).
- ``GeneticPrompt``: the same text as token ids of a language model's tokenizer, for a batch at once.
  Each piece (a gene header ``APOE:``, a SNP id, a genotype, a separator) is tokenised once, so a
  batch is a gather, not a tokenizer call per subject; the pieces are cut at spaces and punctuation,
  where a WordPiece tokenizer cuts too (tested: identical to tokenising the whole text). Gene blocks
  can be put in any order per subject (the gene-order permutation augmentation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from adfuse.errors import ConfigError

MISSING = 3  # genotype code of a missing call; 0, 1, 2 count copies of the counted allele
GENOTYPE_TEXT = ("0/0", "0/1", "1/1", "./.")


# ----------------------------------------------------------------------------- quality control
def hwe_exact_p(n_het: int, n_hom1: int, n_hom2: int) -> float:
    """Two-sided Hardy-Weinberg exact p-value of one SNP's genotype counts.

    The heterozygote count given the allele counts has a known distribution; its probabilities
    follow from a recurrence started at the most likely count, and the p-value sums those no more
    likely than the observed one.
    """
    n = n_het + n_hom1 + n_hom2
    if n == 0:
        return 1.0
    rare_homs = min(n_hom1, n_hom2)
    rare = 2 * rare_homs + n_het  # copies of the rarer allele
    probabilities = np.zeros(rare + 1)
    middle = rare * (2 * n - rare) // (2 * n)
    if (middle - rare) % 2:
        middle += 1
    probabilities[middle] = 1.0
    homs_rare, homs_common = (rare - middle) // 2, n - middle - (rare - middle) // 2
    for het in range(middle, 1, -2):  # fewer heterozygotes
        probabilities[het - 2] = (
            probabilities[het] * het * (het - 1) / (4.0 * (homs_rare + 1) * (homs_common + 1))
        )
        homs_rare, homs_common = homs_rare + 1, homs_common + 1
    homs_rare, homs_common = (rare - middle) // 2, n - middle - (rare - middle) // 2
    for het in range(middle, rare - 1, 2):  # more heterozygotes
        probabilities[het + 2] = (
            probabilities[het] * 4.0 * homs_rare * homs_common / ((het + 2.0) * (het + 1.0))
        )
        homs_rare, homs_common = homs_rare - 1, homs_common - 1
    probabilities /= probabilities.sum()
    observed = probabilities[n_het]
    return float(min(1.0, probabilities[probabilities <= observed * (1 + 1e-7)].sum()))


@dataclass
class SnpQc:
    """Per-SNP statistics of the training subjects and which SNPs pass."""

    maf: np.ndarray
    hwe_p: np.ndarray
    called: np.ndarray  # subjects with a call
    keep: np.ndarray  # MAF > maf_min and HWE p > hwe_p_min
    maf_min: float
    hwe_p_min: float

    def counts(self) -> dict[str, int]:
        low_maf = self.maf <= self.maf_min
        out_of_hwe = self.hwe_p <= self.hwe_p_min
        return {
            "snps": len(self.maf),
            "fail_maf": int(low_maf.sum()),
            "fail_hwe": int(out_of_hwe.sum()),
            "fail_both": int((low_maf & out_of_hwe).sum()),
            "pass": int(self.keep.sum()),
        }


def snp_qc(dosages: np.ndarray, maf_min: float = 0.05, hwe_p_min: float = 1e-6) -> SnpQc:
    """QC of ``dosages [subjects, SNPs]`` (0/1/2, NaN = missing call): keep MAF > ``maf_min`` and
    HWE p > ``hwe_p_min`` (the thresholds of the paper, §4.1)."""
    dosages = np.asarray(dosages, dtype=np.float64)
    called = ~np.isnan(dosages)
    counts = [((dosages == value) & called).sum(axis=0) for value in (0, 1, 2)]
    n_called = called.sum(axis=0)
    allele_1 = counts[1] + 2 * counts[2]
    with np.errstate(invalid="ignore", divide="ignore"):
        frequency = np.where(n_called > 0, allele_1 / (2.0 * np.maximum(n_called, 1)), 0.0)
    maf = np.minimum(frequency, 1 - frequency)
    hwe = np.array(
        [hwe_exact_p(int(h), int(a), int(b)) for a, h, b in zip(*counts, strict=True)],
        dtype=np.float64,
    )
    keep = (maf > maf_min) & (hwe > hwe_p_min)
    return SnpQc(maf, hwe, n_called, keep, maf_min, hwe_p_min)


def association_scores(dosages: np.ndarray, target: np.ndarray, classification: bool) -> np.ndarray:
    """-log10 p of each SNP's association with the target on the given subjects (ANOVA F across
    classes, or the F test of a correlation); missing calls take the SNP's mean."""
    import warnings

    from sklearn.feature_selection import f_classif, f_regression

    dosages = np.asarray(dosages, dtype=np.float64)
    if len(dosages) < 3 or (classification and len(np.unique(target)) < 2):
        return np.zeros(dosages.shape[1])
    with warnings.catch_warnings():  # all-missing or constant SNPs: NaN p-values, handled below
        warnings.simplefilter("ignore")
        means = np.nan_to_num(np.nanmean(dosages, axis=0))
        filled = np.where(np.isnan(dosages), means, dosages)
        _, p = (f_classif if classification else f_regression)(filled, target)
    p = np.nan_to_num(p, nan=1.0)
    return -np.log10(np.clip(p, 1e-300, 1.0))


# ----------------------------------------------------------------------------- text
def serialise(genes: list[tuple[str, list[tuple[str, int]]]], snp_ids: bool = True) -> str:
    """``[(gene, [(snp, code), ...]), ...]`` -> ``"GENE: snp 0/1, snp 1/1; GENE2: ...;"``
    (without ``snp_ids``: ``"GENE: 0/1, 1/1; ..."``)."""
    blocks = []
    for gene, snps in genes:
        inner = ", ".join(
            f"{snp} {GENOTYPE_TEXT[code]}" if snp_ids else GENOTYPE_TEXT[code] for snp, code in snps
        )
        blocks.append(f"{gene}: {inner};")
    return " ".join(blocks)


def gene_groups(snps: tuple[str, ...], groups: dict[str, tuple[str, ...]]) -> list[list[int]]:
    """SNP indices per gene in annotation order; SNPs of no gene form one last group
    ("unannotated": without a SNP -> gene table every SNP is there)."""
    position = {snp: index for index, snp in enumerate(snps)}
    out, seen = [], set()
    for members in groups.values():
        indices = [position[s] for s in members if s in position]
        out.append(indices)
        seen.update(indices)
    rest = [i for i in range(len(snps)) if i not in seen]
    if rest:
        out.append(rest)
    return out


class GeneticPrompt:
    """Token ids of the serialised genotypes of a batch, for the SNPs currently kept.

    ``build(keep)`` lays out one block per gene (header, then per kept SNP its id, genotype and
    separator); ``ids(codes, orders)`` fills the genotype slots from ``codes [B, SNPs]`` and puts the
    blocks in each subject's order. Every subject's text has the same length.
    """

    def __init__(
        self,
        tokenizer,
        gene_names: list[str],
        snp_names: tuple[str, ...],
        members,
        snp_ids: bool = True,
    ):
        def piece(text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        self.gene_names, self.members = gene_names, members
        self.headers = [piece(f"{gene}:") for gene in gene_names]
        self.snp_pieces = [piece(snp) if snp_ids else [] for snp in snp_names]
        genotypes = [piece(text) for text in GENOTYPE_TEXT]
        if len({len(g) for g in genotypes}) != 1:
            raise ConfigError(
                "the language model's tokenizer splits the genotypes "
                f"{', '.join(GENOTYPE_TEXT)} into different numbers of tokens"
            )
        self.genotype_table = torch.tensor(genotypes, dtype=torch.long)  # [4, P]
        self.comma, self.semicolon = piece(","), piece(";")
        self.layout_key: bytes | None = None

    def cost(self, gene: int, indices: list[int]) -> int:
        """Tokens of one gene block listing these SNPs."""
        per_snp = sum(len(self.snp_pieces[i]) for i in indices)
        separators = len(self.comma) * max(len(indices) - 1, 0) + len(self.semicolon)
        return (
            len(self.headers[gene])
            + per_snp
            + self.genotype_table.shape[1] * len(indices)
            + separators
        )

    def build(self, keep: np.ndarray) -> None:
        """Lay out the blocks for the SNPs with ``keep`` True (genes without one are left out)."""
        key = np.asarray(keep, dtype=bool).tobytes()
        if key == self.layout_key:
            return
        ids, slot_position, slot_snp, slot_piece = [], [], [], []
        self.blocks: list[tuple[int, int]] = []  # (start, length) per listed gene
        self.block_gene: list[int] = []
        width = self.genotype_table.shape[1]
        for gene, members in enumerate(self.members):
            kept = [i for i in members if keep[i]]
            if not kept:
                continue
            start = len(ids)
            ids += self.headers[gene]
            for number, snp in enumerate(kept):
                ids += self.snp_pieces[snp]
                for p in range(width):
                    slot_position.append(len(ids))
                    slot_snp.append(snp)
                    slot_piece.append(p)
                    ids.append(0)
                ids += self.semicolon if number == len(kept) - 1 else self.comma
            self.blocks.append((start, len(ids) - start))
            self.block_gene.append(gene)
        self.template = torch.tensor(ids, dtype=torch.long)
        self.slot_position = torch.tensor(slot_position, dtype=torch.long)
        self.slot_snp = torch.tensor(slot_snp, dtype=torch.long)
        self.slot_piece = torch.tensor(slot_piece, dtype=torch.long)
        gene_of_token = torch.empty(len(ids), dtype=torch.long)
        for (start, length), gene in zip(self.blocks, self.block_gene, strict=True):
            gene_of_token[start : start + length] = gene
        self.gene_of_token = gene_of_token
        self.layout_key = key

    @property
    def length(self) -> int:
        return len(self.template)

    def ids(
        self, codes: torch.Tensor, orders: list[list[int]] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``codes [B, SNPs]`` (0/1/2, 3 missing) -> token ids ``[B, length]`` and the gene index of
        every token ``[B, length]``; ``orders[b]`` permutes the listed gene blocks of sample b."""
        device = codes.device
        batch = len(codes)
        ids = self.template.to(device).expand(batch, -1).clone()
        if len(self.slot_position):
            table = self.genotype_table.to(device)
            values = table[codes[:, self.slot_snp.to(device)], self.slot_piece.to(device)]
            ids[:, self.slot_position.to(device)] = values
        genes = self.gene_of_token.to(device).expand(batch, -1)
        if orders is None:
            return ids, genes.clone()
        index = torch.stack(
            [
                torch.cat([torch.arange(s, s + n) for s, n in (self.blocks[b] for b in order)])
                if order
                else torch.zeros(0, dtype=torch.long)
                for order in orders
            ]
        ).to(device)
        return ids.gather(1, index), genes.gather(1, index)


def strongest_per_gene(
    members: list[list[int]], passing: np.ndarray, scores: np.ndarray, snps_per_gene: int | None
) -> list[list[int]]:
    """Per gene, its QC-passing SNPs by decreasing association score (at most ``snps_per_gene``;
    ties keep the annotation order)."""
    ranked = [
        sorted((i for i in indices if passing[i]), key=lambda i: -scores[i]) for indices in members
    ]
    return [r[:snps_per_gene] for r in ranked] if snps_per_gene is not None else ranked


def choose_snps(
    prompt: GeneticPrompt,
    passing: np.ndarray,
    scores: np.ndarray,
    snps_per_gene: int | None,
    budget: int,
) -> np.ndarray:
    """The SNPs written in the text: per gene, its QC-passing SNPs by decreasing association score
    (at most ``snps_per_gene``); then, strongest first, as many as fit in ``budget`` tokens."""
    candidates = []  # (score, gene, snp)
    ranked = strongest_per_gene(prompt.members, passing, scores, snps_per_gene)
    for gene, snps in enumerate(ranked):
        candidates += [(scores[i], gene, i) for i in snps]
    candidates.sort(key=lambda item: -item[0])
    keep = np.zeros(len(passing), dtype=bool)
    chosen: dict[int, list[int]] = {}
    used = 0
    for _, gene, snp in candidates:
        trial = [*chosen.get(gene, []), snp]
        extra = prompt.cost(gene, trial) - (
            prompt.cost(gene, chosen[gene]) if gene in chosen else 0
        )
        if used + extra > budget:
            continue
        chosen[gene], used = trial, used + extra
        keep[snp] = True
    return keep


def genotype_codes(z: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Standardised dosages (prepare's genotype scaler) back to codes 0/1/2, 3 = missing: an imputed
    call lands on the training mean, which is not a whole dosage."""
    dosage = z.to(mean.dtype) * scale + mean
    rounded = dosage.round()
    called = ((dosage - rounded).abs() < 1e-2) & (rounded >= 0) & (rounded <= 2)
    return torch.where(called, rounded.long(), torch.full_like(rounded, MISSING).long())
