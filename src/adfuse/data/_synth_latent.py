"""The latent disease process of the synthetic cohort: genotypes, severity, diagnoses, scores.

One continuous severity ``s`` (standard units at baseline) drives every modality. It is a sum of a
genetic liability (APOE plus small planted effects), age and a residual; a clinician's noise ``eta``
(fixed per subject, independent of every observed value) is added before thresholding into
CN < SMC < EMCI < LMCI < AD. Severity grows linearly in time at a subject's rate ``r``.

Everything is vectorised over subjects; random numbers come from named, independent streams
(``stream(seed, name, index)``) so that a subset of the outputs never changes the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from adfuse.data import layout
from adfuse.data._synth_config import (
    AVAILABILITY_KEYS,
    DX_CODES,
    PROTOCOLS,
    VISIT_DX,
    ScoreModel,
    SynthConfig,
)

_STREAMS = {
    name: index
    for index, name in enumerate(
        (
            "panel",
            "genotype",
            "subjects",
            "visits",
            "availability",
            "missing_calls",
            "anatomy",
            "t1",
            "flair",
            "amyloid",
            "tau",
            "fdg",
            "fmri",
            "notes",
            "scores_missing",
            "sites",
        ),
        start=1,
    )
}
REFERENCE_SEED = 20100201  # fixed: thresholds depend on the config and panel, not on the cohort

# AD candidate genes (IGAP, Lambert et al. 2013) and null housekeeping genes: GRCh37 loci,
# approximate (chromosome, start, end).
AD_GENES: dict[str, tuple[str, int, int]] = {
    "APOE": ("19", 45_409_011, 45_412_650),
    "BIN1": ("2", 127_805_603, 127_864_931),
    "CLU": ("8", 27_454_434, 27_472_328),
    "PICALM": ("11", 85_668_214, 85_780_924),
    "CR1": ("1", 207_669_492, 207_813_992),
    "ABCA7": ("19", 1_040_102, 1_065_571),
    "SORL1": ("11", 121_322_912, 121_504_471),
    "TREM2": ("6", 41_126_244, 41_130_924),
    "RBFOX1": ("16", 6_069_132, 7_763_340),
    "CD33": ("19", 51_728_335, 51_743_274),
    "MS4A6A": ("11", 59_939_081, 59_952_139),
    "EPHA1": ("7", 143_087_382, 143_105_985),
    "CD2AP": ("6", 47_445_525, 47_594_999),
    "PTK2B": ("8", 27_168_999, 27_316_903),
    "MEF2C": ("5", 88_013_975, 88_199_922),
    "ZCWPW1": ("7", 99_998_449, 100_026_431),
    "CASS4": ("20", 54_987_168, 55_034_396),
    "FERMT2": ("14", 53_323_989, 53_417_815),
    "SLC24A4": ("14", 92_788_925, 92_967_825),
    "INPP5D": ("2", 233_925_236, 234_076_007),
    "HLA-DRB1": ("6", 32_546_547, 32_557_625),
    "NME8": ("7", 37_888_193, 37_940_003),
    "CELF1": ("11", 47_487_489, 47_587_129),
    "ADAM10": ("15", 58_887_403, 59_042_177),
    "ACE": ("17", 61_554_422, 61_575_741),
}
NULL_GENES: dict[str, tuple[str, int, int]] = {
    "GAPDH": ("12", 6_534_512, 6_538_374),
    "ACTB": ("7", 5_566_779, 5_570_232),
    "TBP": ("6", 170_863_384, 170_881_958),
    "B2M": ("15", 45_003_675, 45_011_075),
    "RPLP0": ("12", 120_634_492, 120_639_038),
    "PPIA": ("7", 44_836_241, 44_838_523),
    "GUSB": ("7", 65_425_671, 65_447_301),
    "HMBS": ("11", 118_955_588, 118_964_364),
    "SDHA": ("5", 218_356, 256_815),
    "YWHAZ": ("8", 101_930_804, 101_965_616),
    "UBC": ("12", 125_396_194, 125_399_587),
    "TFRC": ("3", 195_754_054, 195_809_060),
    "ALAS1": ("3", 52_232_102, 52_248_343),
    "POLR2A": ("17", 7_387_685, 7_417_933),
}
FLANK = 20_000  # SNPs may sit up to 20 kb outside a gene
APOE_E4 = ("rs429358", 45_411_941, "C", "T")  # id, GRCh37 position, e4 allele, other allele
APOE_E2 = ("rs7412", 45_412_079, "T", "C")  # e2 allele T
_ALLELE_PAIRS = (("A", "G"), ("G", "A"), ("C", "T"), ("T", "C"), ("A", "C"), ("G", "T"))

# About 50 site numbers of ADNI style.
SITES: tuple[int, ...] = (
    2, 3, 5, 6, 7, 9, 10, 11, 12, 13, 14, 16, 18, 19, 20, 21, 22, 23, 24, 27, 29, 31, 32, 33,
    35, 36, 37, 41, 51, 52, 53, 57, 62, 67, 68, 70, 72, 73, 82, 94, 98, 99, 100, 109, 114, 116,
    123, 126, 127, 128, 129, 130, 131, 133, 135, 136, 137, 141, 153, 941,
)  # fmt: skip
MONTHS: tuple[int, ...] = (0, 6, 12, 18, 24, 36, 48)
BASELINE_GROUP = {"CN": "CN", "SMC": "CN", "EMCI": "MCI", "LMCI": "MCI", "AD": "AD"}
_SCHEDULES = {  # (protocol, group) -> planned months; m18 only for ADNI-1 MCI
    ("ADNI1", "CN"): (0, 6, 12, 24, 36),
    ("ADNI1", "MCI"): (0, 6, 12, 18, 24, 36),
    ("ADNI1", "AD"): (0, 6, 12, 24),
    ("ADNI2", "CN"): (0, 6, 12, 24, 36, 48),
    ("ADNI2", "MCI"): (0, 6, 12, 24, 36, 48),
    ("ADNI2", "AD"): (0, 6, 12, 24),
    ("ADNI3", "CN"): (0, 12, 24, 36, 48),
    ("ADNI3", "MCI"): (0, 12, 24, 36, 48),
    ("ADNI3", "AD"): (0, 12, 24),
}
_FIRST_RID = {"ADNI1": 2, "ADNI2": 4001, "ADNI3": 6001}
_BASELINE_DATES = {  # enrolment windows
    "ADNI1": ("2005-09-07", "2007-09-30"),
    "ADNI2": ("2010-10-01", "2013-06-30"),
    "ADNI3": ("2016-09-01", "2019-12-31"),
}
_CATEGORIES = {  # ADNIMERGE codings with ADNI-like shares
    "PTETHCAT": {"Not Hisp/Latino": 0.965, "Hisp/Latino": 0.03, "Unknown": 0.005},
    "PTRACCAT": {
        "White": 0.92,
        "Black": 0.04,
        "Asian": 0.02,
        "More than one": 0.01,
        "Am Indian/Alaskan": 0.004,
        "Hawaiian/Other PI": 0.002,
        "Unknown": 0.004,
    },
    "PTMARRY": {
        "Married": 0.75,
        "Widowed": 0.12,
        "Divorced": 0.08,
        "Never married": 0.04,
        "Unknown": 0.01,
    },
}


def stream(seed: int, name: str, *index: int) -> np.random.Generator:
    """An independent random generator for (seed, stream name, indices)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_STREAMS[name], *index)))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x)))


# --- genotype panel -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Panel:
    """The SNP set: one row per SNP in .bim order, with the hidden simulation parameters."""

    snps: pd.DataFrame  # snp gene chromosome position allele_1 allele_2 maf latent tail beta null
    block_start: np.ndarray  # per latent column: True where an LD block starts (AR(1) resets)
    gene_latents: dict[str, slice]  # latent columns of each gene
    gene_snps: dict[str, slice]  # SNP rows of each gene

    @property
    def causal(self) -> pd.DataFrame:
        return self.snps[self.snps["beta"] != 0]


def _allocate(total: int, weights: np.ndarray, minimum: int) -> np.ndarray:
    """Integer counts summing to total, proportional to weights, each at least minimum."""
    minimum = min(minimum, total // len(weights))
    extra = total - minimum * len(weights)
    raw = weights / weights.sum() * extra
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: extra - counts.sum()]] += 1
    return counts + minimum


def make_panel(config: SynthConfig, seed: int) -> Panel:
    """SNP ids, positions, alleles, MAFs, LD blocks and the planted causal effects."""
    rng = stream(seed, "panel")
    genes = {**AD_GENES, **NULL_GENES}
    names = list(genes)
    is_null = np.array([name in NULL_GENES for name in names])
    lengths = np.array([end - start + 2 * FLANK for _, start, end in genes.values()], float)
    n_null = int(round(config.n_snps * config.null_snp_share))
    counts = np.zeros(len(names), dtype=int)
    counts[is_null] = _allocate(n_null, np.sqrt(lengths[is_null]), 8)
    counts[~is_null] = _allocate(config.n_snps - n_null, np.sqrt(lengths[~is_null]), 12)

    ids = rng.choice(1_000_000, size=config.n_snps, replace=False)
    rows, block_start, gene_latents, gene_snps = [], [], {}, {}
    for name, count in zip(names, counts, strict=True):
        chromosome, start, end = genes[name]
        fixed = [APOE_E4, APOE_E2] if name == "APOE" else []
        taken = {snp[1] for snp in fixed}
        free = rng.choice(end - start + 2 * FLANK, size=count - len(fixed) + 2, replace=False)
        positions = [int(p) + start - FLANK for p in free if int(p) + start - FLANK not in taken]
        positions = sorted(positions[: count - len(fixed)] + [snp[1] for snp in fixed])
        first_latent, first_snp = len(block_start), len(rows)
        for position in positions:
            rare = rng.random() < config.rare_share
            maf = rng.uniform(0.005, 0.05) if rare else rng.uniform(config.maf_min, config.maf_max)
            minor, major = _ALLELE_PAIRS[rng.integers(len(_ALLELE_PAIRS))]
            row = dict(
                snp=f"rs9{ids[len(rows)]:06d}",
                gene=name,
                chromosome=chromosome,
                position=position,
                allele_1=minor,
                allele_2=major,
                maf=maf,
                latent=len(block_start),
                tail=1,
                beta=0.0,
                null=name in NULL_GENES,
            )
            if position == APOE_E4[1]:
                row.update(snp=APOE_E4[0], allele_1="C", allele_2="T", maf=config.apoe4_frequency)
            if position == APOE_E2[1]:  # e2 shares e4's latent, other tail: never on one haplotype
                row.update(snp=APOE_E2[0], allele_1="T", allele_2="C", maf=config.apoe2_frequency)
                row.update(latent=len(block_start) - 1, tail=-1)
            else:
                block_start.append(False)
            rows.append(row)
        _mark_blocks(block_start, first_latent, config, rng)
        gene_latents[name] = slice(first_latent, len(block_start))
        gene_snps[name] = slice(first_snp, len(rows))
    snps = pd.DataFrame(rows)

    # Planted effects: one common SNP in each of n_causal AD genes (APOE apart).
    candidates = [name for name in AD_GENES if name != "APOE"]
    chosen = rng.choice(len(candidates), size=config.n_causal, replace=False)
    for gene in sorted(candidates[i] for i in chosen):
        rows_of_gene = np.arange(gene_snps[gene].start, gene_snps[gene].stop)
        common = rows_of_gene[snps["maf"].to_numpy()[rows_of_gene] >= 0.1]
        pick = int(rng.choice(common if len(common) else rows_of_gene))
        size = rng.uniform(config.causal_effect_min, config.causal_effect_max)
        sign = -1.0 if rng.random() < config.causal_protective_share else 1.0
        snps.loc[pick, "beta"] = sign * size
    apoe = snps["snp"].isin([APOE_E4[0], APOE_E2[0]])
    snps.loc[snps["snp"] == APOE_E4[0], "beta"] = config.apoe4_effect
    snps.loc[snps["snp"] == APOE_E2[0], "beta"] = config.apoe2_effect
    snps["apoe"] = apoe
    return Panel(snps, np.array(block_start), gene_latents, gene_snps)


def _mark_blocks(block_start: list[bool], first: int, config: SynthConfig, rng) -> None:
    """Split a gene's latent columns into LD blocks of random length."""
    position = first
    while position < len(block_start):
        block_start[position] = True
        position += int(rng.integers(config.ld_block_min, config.ld_block_max + 1))


def simulate_genotypes(
    panel: Panel, config: SynthConfig, n: int, seed: int, genes: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Minor-allele dosages (int8, n x SNPs of the chosen genes) and those SNPs' row numbers.

    Per gene and haplotype, a latent Gaussian AR(1) (rho = ld_rho, reset at block starts) is
    thresholded at each SNP's MAF; a person is two haplotypes. Each gene has its own random stream,
    so simulating a subset of genes gives the same values for them.
    """
    from scipy.special import ndtri

    names = list(panel.gene_snps) if genes is None else genes
    rho, innovation = config.ld_rho, np.sqrt(1 - config.ld_rho**2)
    parts, rows = [], []
    for name in names:
        gene_index = list(panel.gene_snps).index(name)
        latents, snp_rows = panel.gene_latents[name], panel.gene_snps[name]
        latent = stream(seed, "genotype", gene_index).standard_normal(
            (2 * n, latents.stop - latents.start), dtype=np.float32
        )
        starts = panel.block_start[latents]
        for column in range(1, latent.shape[1]):
            if not starts[column]:
                latent[:, column] = rho * latent[:, column - 1] + innovation * latent[:, column]
        snps = panel.snps.iloc[snp_rows]
        maf = snps["maf"].to_numpy()
        columns = snps["latent"].to_numpy() - latents.start
        upper = snps["tail"].to_numpy() > 0
        threshold = np.where(upper, ndtri(1 - maf), ndtri(maf)).astype(np.float32)
        values = latent[:, columns]
        carries = np.where(upper, values > threshold, values < threshold)
        parts.append(carries[:n].astype(np.int8) + carries[n:].astype(np.int8))
        rows.extend(range(snp_rows.start, snp_rows.stop))
    return np.concatenate(parts, axis=1), np.asarray(rows)


def genetic_liability(panel: Panel, config: SynthConfig, dosages: np.ndarray, rows: np.ndarray):
    """G = sum of beta_j x dosage_j over causal SNPs, plus the e4/e4 genotype effect."""
    beta = panel.snps["beta"].to_numpy()[rows]
    liability = dosages.astype(np.float64) @ beta
    e4 = dosages[:, list(panel.snps["snp"].iloc[rows]).index(APOE_E4[0])]
    return liability + config.apoe44_extra * (e4 == 2), e4


# --- severity scale and thresholds ---------------------------------------------------------------


def _truncated_normal(rng, n: int, mean: float, sd: float, low: float, high: float):
    from scipy.special import ndtr, ndtri

    lo, hi = ndtr((low - mean) / sd), ndtr((high - mean) / sd)
    return mean + sd * ndtri(rng.uniform(lo, hi, size=n))


def _residual(rng, n: int, config: SynthConfig) -> np.ndarray:
    """Non-genetic liability with mean 0 and SD 1 (Gumbel: a long tail towards severe)."""
    if config.residual == "normal":
        return rng.standard_normal(n)
    gumbel = -np.log(-np.log(rng.uniform(1e-300, 1.0, size=n)))
    return (gumbel - np.euler_gamma) * np.sqrt(6) / np.pi


@lru_cache(maxsize=16)
def _reference(config_json: str, effects: tuple[tuple[float, float], ...]):
    """Mean and SD of raw severity, and the diagnosis thresholds, in a large reference sample."""
    config = SynthConfig.model_validate_json(config_json)
    rng = np.random.default_rng(REFERENCE_SEED)
    m = 400_000
    p4, p2 = config.apoe4_frequency, config.apoe2_frequency
    haplotypes = rng.choice(3, size=(2, m), p=[p2, 1 - p2 - p4, p4])  # 0 = e2, 2 = e4
    e4, e2 = (haplotypes == 2).sum(0), (haplotypes == 0).sum(0)
    raw = config.apoe4_effect * e4 + config.apoe44_extra * (e4 == 2) + config.apoe2_effect * e2
    for maf, beta in effects:
        raw = raw + beta * rng.binomial(2, maf, size=m)
    age = _truncated_normal(rng, m, config.age_mean, config.age_sd, config.age_min, config.age_max)
    raw = raw + config.age_effect * (age - config.age_mean) / 10 + _residual(rng, m, config)
    mean, sd = raw.mean(), raw.std()
    observed = (raw - mean) / sd + config.dx_noise_sd * rng.standard_normal(m)
    cumulative = np.cumsum([config.dx_mix[code] for code in DX_CODES])[:-1]
    return float(mean), float(sd), tuple(float(q) for q in np.quantile(observed, cumulative))


def severity_scale(config: SynthConfig, panel: Panel) -> tuple[float, float, tuple[float, ...]]:
    """(mean, SD) that standardise raw liability, and the 4 thresholds CN|SMC|EMCI|LMCI|AD."""
    others = panel.causal[~panel.causal["apoe"]]
    effects = tuple(zip(others["maf"].round(12), others["beta"].round(12), strict=True))
    return _reference(config.model_dump_json(), effects)


# --- the cohort -------------------------------------------------------------------------------------


@dataclass
class Simulation:
    """Everything sampled before files are written."""

    config: SynthConfig
    seed: int
    panel: Panel
    subjects: pd.DataFrame  # one row per subject, in simulation order (column subject_index)
    visits: pd.DataFrame  # one row per planned subject-visit, sorted by RID then Month
    thresholds: tuple[float, ...]
    scale: tuple[float, float]


def simulate(config: SynthConfig, n_subjects: int, seed: int) -> Simulation:
    """Sample subjects, their latent process, visits and scores (no files, no images)."""
    panel = make_panel(config, seed)
    causal_genes = sorted(set(panel.causal["gene"]), key=list(panel.gene_snps).index)
    dosages, rows = simulate_genotypes(panel, config, n_subjects, seed, causal_genes)
    liability, e4 = genetic_liability(panel, config, dosages, rows)
    e2 = dosages[:, list(panel.snps["snp"].iloc[rows]).index(APOE_E2[0])]
    mean, sd, thresholds = severity_scale(config, panel)

    rng = stream(seed, "subjects")
    n = n_subjects
    age = np.round(
        _truncated_normal(rng, n, config.age_mean, config.age_sd, config.age_min, config.age_max),
        1,
    )
    female = rng.random(n) < config.female_fraction
    education = np.clip(
        np.round(rng.normal(config.education_mean, config.education_sd, n)),
        config.education_min,
        config.education_max,
    ).astype(int)
    residual = _residual(rng, n, config)
    eta = config.dx_noise_sd * rng.standard_normal(n)
    raw = liability + config.age_effect * (age - config.age_mean) / 10 + residual
    severity = (raw - mean) / sd
    dx_bl = np.asarray(DX_CODES)[np.digitize(severity + eta, thresholds)]
    group = np.asarray([BASELINE_GROUP[code] for code in dx_bl])

    # Amyloid is partly independent of severity (amyloid_factor); amyloid-positive subjects also
    # progress faster: that factor carries part of the log-normal rate variation.
    amyloid_factor = rng.standard_normal(n)
    share = config.rate_amyloid_share
    rate_noise = share * amyloid_factor + np.sqrt(1 - share**2) * rng.standard_normal(n)
    rate = (
        config.rate_base
        + config.rate_gain * sigmoid((severity - config.rate_center) / config.rate_width)
        + config.rate_apoe4 * e4
    ) * np.exp(config.rate_noise_sd * rate_noise - config.rate_noise_sd**2 / 2)

    protocol = _protocols(rng, dx_bl, config)
    weights = rng.dirichlet(np.full(config.n_sites, 2.0))
    site = np.asarray(SITES[: config.n_sites])[rng.choice(config.n_sites, size=n, p=weights)]
    rid = _rids(rng, protocol)
    subjects = pd.DataFrame(
        {
            "subject_index": np.arange(n),
            "RID": rid,
            "PTID": [f"{s:03d}_S_{r:04d}" for s, r in zip(site, rid, strict=True)],
            "SITE": site,
            "COLPROT": protocol,
            "ORIGPROT": protocol,
            "DX_bl": dx_bl,
            "group": group,
            "AGE": age,
            "PTGENDER": np.where(female, "Female", "Male"),
            "PTEDUCAT": education,
        }
    )
    for column, shares in _CATEGORIES.items():
        subjects[column] = rng.choice(list(shares), size=n, p=_normalised(shares))
    subjects["APOE4"] = e4.astype(int)
    subjects["apoe2"] = e2.astype(int)
    subjects["G"] = (liability - mean) / sd
    subjects["severity_bl"] = severity
    subjects["rate"] = rate
    subjects["eta"] = eta
    subjects["amyloid_shift"] = config.amyloid_subject_sd * amyloid_factor
    subjects["adni1_extended"] = (protocol == "ADNI1") & (
        rng.random(n) < config.adni1_extended_share
    )
    subjects["baseline_date"] = _baseline_dates(rng, protocol)
    subjects = pd.concat([subjects, _availability(config, seed, severity)], axis=1)

    visits = _visits(config, seed, subjects, thresholds)
    visits = visits.sort_values(["RID", "Month"], kind="stable").reset_index(drop=True)
    return Simulation(config, seed, panel, subjects, visits, thresholds, (mean, sd))


def _normalised(shares: dict[str, float]) -> np.ndarray:
    values = np.asarray(list(shares.values()), float)
    return values / values.sum()


def _protocols(rng, dx_bl: np.ndarray, config: SynthConfig) -> np.ndarray:
    """ADNI1/2/3; SMC and EMCI did not exist in ADNI-1."""
    shares = _normalised(config.protocol_share)
    protocol = np.asarray(PROTOCOLS)[rng.choice(3, size=len(dx_bl), p=shares)]
    late = np.isin(dx_bl, ("SMC", "EMCI")) & (protocol == "ADNI1")
    later = _normalised({"ADNI2": shares[1], "ADNI3": shares[2]})
    protocol[late] = np.asarray(PROTOCOLS[1:])[rng.choice(2, size=late.sum(), p=later)]
    return protocol


def _rids(rng, protocol: np.ndarray) -> np.ndarray:
    """ADNI-style roster ids: each protocol has its own range, with small gaps."""
    rid = np.zeros(len(protocol), dtype=int)
    next_free = 1
    for name in PROTOCOLS:
        members = np.flatnonzero(protocol == name)
        rng.shuffle(members)
        start = max(_FIRST_RID[name], next_free)
        rid[members] = start + np.cumsum(rng.integers(1, 4, size=len(members))) - 1
        next_free = (rid[members].max() + 1) if len(members) else next_free
    return rid


def _baseline_dates(rng, protocol: np.ndarray) -> np.ndarray:
    dates = np.empty(len(protocol), dtype="datetime64[D]")
    for name, (first, last) in _BASELINE_DATES.items():
        members = protocol == name
        span = (np.datetime64(last) - np.datetime64(first)).astype(int)
        dates[members] = np.datetime64(first) + rng.integers(0, span, size=members.sum())
    return dates


def _availability(config: SynthConfig, seed: int, severity: np.ndarray) -> pd.DataFrame:
    """Which modalities each subject has (subject level; images at every image visit).

    With ``missing_not_at_random`` PET and fMRI are less likely at high severity, with the overall
    rate kept. When n >= 100, every pattern of {t1, flair, amyloid, tau} is then made to occur at
    least 3 times by giving a few subjects of the most common patterns a missing pattern.
    """
    rng = stream(seed, "availability")
    n = len(severity)
    table = {}
    for modality in AVAILABILITY_KEYS:
        rate = config.rate(modality)
        draw = rng.random(n)
        if config.missing_not_at_random and modality in ("amyloid", "tau", "fdg", "fmri"):
            probability = _matched_logistic(rate, -config.mnar_strength * severity)
        else:
            probability = np.full(n, rate)
        table[f"has_{modality}"] = draw < probability
    frame = pd.DataFrame(table)
    if n >= 100:
        _cover_patterns(frame, rng, ("t1", "flair", "amyloid", "tau"), minimum=3)
    return frame


def _matched_logistic(rate: float, shift: np.ndarray) -> np.ndarray:
    """Probabilities sigmoid(b + shift) with b chosen (bisection) so that their mean is rate."""
    if rate <= 0 or rate >= 1:
        return np.full(len(shift), rate)
    low, high = -30.0, 30.0
    for _ in range(60):
        middle = (low + high) / 2
        if sigmoid(middle + shift).mean() < rate:
            low = middle
        else:
            high = middle
    return sigmoid((low + high) / 2 + shift)


def _cover_patterns(frame: pd.DataFrame, rng, modalities: tuple[str, ...], minimum: int) -> None:
    columns = [f"has_{m}" for m in modalities]
    bits = 2 ** np.arange(len(columns))
    codes = frame[columns].to_numpy().astype(int) @ bits
    for pattern in range(2 ** len(columns)):
        missing = minimum - int((codes == pattern).sum())
        if missing <= 0:
            continue
        counts = np.bincount(codes, minlength=2 ** len(columns))
        donors = np.flatnonzero(codes == np.argmax(counts))
        chosen = rng.choice(donors, size=missing, replace=False)
        codes[chosen] = pattern
    frame[columns] = (codes[:, None] & bits) > 0


def _visits(config, seed, subjects: pd.DataFrame, thresholds) -> pd.DataFrame:
    """Planned visits, dropout, diagnoses and cognitive scores for every subject."""
    rng = stream(seed, "visits")
    n = len(subjects)
    months = np.asarray(MONTHS)
    planned = np.zeros((n, len(months)), dtype=bool)
    for (protocol, group), schedule in _SCHEDULES.items():
        members = (subjects["COLPROT"] == protocol).to_numpy() & (
            subjects["group"] == group
        ).to_numpy()
        planned[np.ix_(members, np.isin(months, schedule))] = True
    planned[subjects["adni1_extended"].to_numpy(), -1] = True

    severity = subjects["severity_bl"].to_numpy()[:, None] + subjects["rate"].to_numpy()[
        :, None
    ] * (months[None, :] / 12)
    code = np.digitize(severity + subjects["eta"].to_numpy()[:, None], thresholds)
    demented = code == len(DX_CODES) - 1

    # Dropout between consecutive planned visits; more likely once demented.
    hazard = -np.log(1 - config.dropout_per_year)
    observed = planned.copy()
    staying = np.ones(n, dtype=bool)
    last_month = np.zeros(n)
    last_demented = demented[:, 0]
    draws = rng.random((n, len(months)))
    for column in range(1, len(months)):
        due = planned[:, column]
        gap = (months[column] - last_month) / 12
        factor = np.where(last_demented, config.dropout_dementia_factor, 1.0)
        staying &= ~due | (draws[:, column] < np.exp(-hazard * factor * gap))
        observed[:, column] = due & staying
        last_month = np.where(due, months[column], last_month)
        last_demented = np.where(due, demented[:, column], last_demented)

    subject_row, month_column = np.nonzero(planned)
    visits = subjects.iloc[subject_row].reset_index(drop=True)
    month = months[month_column]
    visits["Month"] = month
    visits["VISCODE"] = [layout.month_viscode(int(m)) for m in month]
    visits["observed"] = observed[subject_row, month_column]
    visits["severity"] = severity[subject_row, month_column]
    codes = np.asarray(DX_CODES)[code[subject_row, month_column]]
    visits["dx_code"] = codes
    visits["DX"] = [VISIT_DX[c] for c in codes]
    jitter = np.where(month == 0, 0, rng.integers(-14, 15, size=len(month)))
    days = np.round(month * 30.4375 + jitter).astype(int).astype("timedelta64[D]")
    visits["EXAMDATE"] = visits["baseline_date"].to_numpy().astype("datetime64[D]") + days
    visits["amyloid_load"] = sigmoid(
        (
            visits["severity"]
            - config.amyloid_regions.onset
            + config.amyloid_apoe4_shift * visits["APOE4"]
            + visits["amyloid_shift"]
        ).to_numpy()
        / config.amyloid_width
    )
    _add_scores(config, rng, visits, subject_row, n)
    return visits


def _score(model: ScoreModel, severity, education, trait, noise, config: SynthConfig) -> np.ndarray:
    expected = np.interp(severity, model.knots, model.mean)
    expected = expected + model.per_education_year * (education - config.education_mean)
    sd = np.interp(severity, model.knots, model.sd)
    value = expected + sd * (
        np.sqrt(model.trait_share) * trait + np.sqrt(1 - model.trait_share) * noise
    )
    return np.clip(value, model.low, model.high)


def _round_to(value: np.ndarray, step: float) -> np.ndarray:
    return np.round(np.round(value / step) * step, 2)


def _add_scores(config: SynthConfig, rng, visits: pd.DataFrame, subject_row, n: int) -> None:
    severity = visits["severity"].to_numpy()
    education = visits["PTEDUCAT"].to_numpy()
    models = {
        "MMSE": config.mmse,
        "CDRSB": config.cdrsb,
        "ADAS13": config.adas13,
        "ADAS_DELTA": config.adas_delta,
        "RAVLT_immediate": config.ravlt,
        "FAQ": config.faq,
    }
    traits = rng.standard_normal((n, len(models)))[subject_row]
    noises = rng.standard_normal((len(visits), len(models)))
    raw = {
        name: _score(model, severity, education, traits[:, k], noises[:, k], config)
        for k, (name, model) in enumerate(models.items())
    }
    adas13 = raw["ADAS13"]
    adas11 = np.clip(adas13 - raw["ADAS_DELTA"], 0, 70)
    visits["MMSE"] = _round_to(raw["MMSE"], 1).astype(int)
    visits["CDRSB"] = _round_to(raw["CDRSB"], 0.5)
    visits["ADAS11"] = _round_to(adas11, 1 / 3)
    visits["ADAS13"] = np.maximum(_round_to(adas13, 1 / 3), visits["ADAS11"])
    visits["RAVLT_immediate"] = _round_to(raw["RAVLT_immediate"], 1).astype(int)
    visits["FAQ"] = _round_to(raw["FAQ"], 1).astype(int)
