"""Configuration of the synthetic cohort: every number of the generator, with where it comes from.

Severity ``s`` is in standard units: at baseline it has mean 0 and SD 1 in the recruited population,
so every onset, knot and threshold below is on that scale (the diagnosis thresholds fall at about
-0.58 CN|SMC, -0.36 SMC|EMCI, 0.2 EMCI|LMCI and 1.04 LMCI|AD). Targets the numbers were tuned to meet
are in ``CALIBRATION_TARGETS`` (checked by tests/unit/test_synth.py on ``sample_latents``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from adfuse.errors import ConfigError

PETERSEN_2010 = (
    "Petersen R.C. et al. (2010) Neurology 74:201-209, ADNI-1 baseline characteristics (Table 1)"
)
FARRER_1997 = "Farrer L.A. et al. (1997) JAMA 278:1349-1356, APOE genotype odds ratios for AD"
JACK_2010 = (
    "Jack C.R. et al. (2010) Lancet Neurol 9:119-128 and (2013) 12:207-216, biomarker cascade"
)
BRAAK_1991 = "Braak H. & Braak E. (1991) Acta Neuropathol 82:239-259, neurofibrillary staging"
LANDAU_2012 = "Landau S.M. et al. (2012) Ann Neurol 72:578-586, florbetapir SUVR cut-off 1.11"
ADNI_PROCEDURES = "ADNI procedures manuals (ADNI-1, ADNI-GO/2, ADNI-3), adni.loni.usc.edu"
ADNIMERGE_SUMMARY = "ADNIMERGE (ADNI R package) baseline summaries, rounded"
FRISONI_2010 = "Frisoni G.B. et al. (2010) Nat Rev Neurol 6:67-77, hippocampal atrophy in AD"
LAMBERT_2013 = "Lambert J.C. et al. (2013) Nat Genet 45:1452-1458, IGAP AD risk loci"
GREICIUS_2004 = "Greicius M.D. et al. (2004) PNAS 101:4637-4642, default-mode network in AD"

# What the defaults were tuned to reproduce (group = baseline DX: CN+SMC, EMCI+LMCI, AD).
CALIBRATION_TARGETS: dict[str, dict] = {
    "dx_mix": {
        "target": {"CN": 0.28, "SMC": 0.08, "EMCI": 0.22, "LMCI": 0.27, "AD": 0.15},
        "source": "ADNI-1 229 CN / 398 MCI / 192 AD (" + PETERSEN_2010 + "); ADNI-GO/2 added "
        "SMC and EMCI (" + ADNI_PROCEDURES + ")",
    },
    "age": {"target": {"mean": 74.0, "sd": 7.0, "range": [55, 91]}, "source": PETERSEN_2010},
    "female_fraction": {"target": 0.47, "source": PETERSEN_2010},
    "education": {"target": {"mean": 15.6, "sd": 2.9}, "source": PETERSEN_2010},
    "apoe4_carriers": {
        "target": {"CN": [0.25, 0.30], "MCI": [0.45, 0.55], "AD": [0.60, 0.67]},
        "source": PETERSEN_2010,
    },
    "apoe4_odds_ratio_ad_vs_cn": {
        "target": {"one_copy": 3.0, "two_copies": [12, 15]},
        "source": FARRER_1997 + " (3.2 for e3/e4, 14.9 for e4/e4 in clinical Caucasian series)",
    },
    "mmse": {
        "target": {"CN": [29.1, 1.0], "MCI": [27.0, 1.8], "AD": [23.3, 2.0]},
        "source": PETERSEN_2010,
    },
    "cdrsb": {
        "target": {"CN": [0.03, 0.1], "MCI": [1.6, 0.9], "AD": [4.3, 1.6]},
        "source": PETERSEN_2010,
    },
    "adas13": {
        "target": {"CN": [9.5, 4.2], "MCI": [18.6, 6.2], "AD": [28.9, 7.6]},
        "source": ADNIMERGE_SUMMARY,
    },
    "adas11": {
        "target": {"CN": [6.2, 2.9], "MCI": [11.5, 4.4], "AD": [18.6, 6.3]},
        "source": PETERSEN_2010,
    },
    "ravlt_immediate": {
        "target": {"CN": [43.3, 9.1], "MCI": [30.7, 9.0], "AD": [23.2, 7.7]},
        "source": ADNIMERGE_SUMMARY,
    },
    "faq": {
        "target": {"CN": [0.1, 0.6], "MCI": [3.9, 4.5], "AD": [13.0, 6.9]},
        "source": ADNIMERGE_SUMMARY,
    },
    "mci_to_ad_per_year": {
        "target": [0.15, 0.17],
        "source": "ADNI-1 MCI annual conversion about 16 % (" + PETERSEN_2010 + ")",
    },
    "cdrsb_change_24_months": {
        "target": {"CN": [0.1, 0.3], "MCI": [1.0, 1.7], "AD": [2.5, 3.5]},
        "source": "ADNI-1 24-month change reports (Petersen 2010; ADNIMERGE)",
    },
    "hippocampus_ad_over_cn": {"target": 0.8, "source": FRISONI_2010},
    "amyloid_positive_cn": {"target": 0.30, "source": JACK_2010 + "; " + LANDAU_2012},
    "dropout_per_year": {"target": [0.08, 0.10], "source": ADNI_PROCEDURES},
}

DX_CODES: tuple[str, ...] = ("CN", "SMC", "EMCI", "LMCI", "AD")
VISIT_DX: dict[str, str] = {"CN": "CN", "SMC": "CN", "EMCI": "MCI", "LMCI": "MCI", "AD": "Dementia"}
PROTOCOLS: tuple[str, ...] = ("ADNI1", "ADNI2", "ADNI3")
SCORES: tuple[str, ...] = ("MMSE", "CDRSB", "ADAS13", "ADAS_DELTA", "RAVLT_immediate", "FAQ")
AVAILABILITY_KEYS: tuple[str, ...] = (
    "genotype",
    "t1",
    "flair",
    "amyloid",
    "tau",
    "fdg",
    "fmri",
    "notes",
)

FRONTAL = (
    "superiorfrontal",
    "rostralmiddlefrontal",
    "caudalmiddlefrontal",
    "parsopercularis",
    "parstriangularis",
    "parsorbitalis",
    "lateralorbitofrontal",
    "medialorbitofrontal",
    "frontalpole",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScoreModel(_Strict):
    """Expected score = piecewise-linear in severity (knots), plus noise whose SD is also
    piecewise-linear in severity; a share of the noise variance is a persistent subject trait."""

    knots: tuple[float, ...] = Field(description="severity values of the knots, increasing")
    mean: tuple[float, ...] = Field(description="expected score at each knot")
    sd: tuple[float, ...] = Field(description="noise SD at each knot")
    trait_share: float = Field(0.5, ge=0, le=1, description="share of noise variance per subject")
    per_education_year: float = Field(0.0, description="shift per year of education above mean")
    low: float
    high: float
    step: float = Field(1.0, description="rounding step of the written score")

    @model_validator(mode="after")
    def _lengths(self) -> ScoreModel:
        if not len(self.knots) == len(self.mean) == len(self.sd) or len(self.knots) < 2:
            raise ValueError("knots, mean and sd need the same length (>= 2)")
        if any(b <= a for a, b in zip(self.knots, self.knots[1:], strict=False)):
            raise ValueError("knots must increase")
        return self


class RegionStage(_Strict):
    """A set of atlas regions (names without the lh-/rh- prefix) that change together."""

    regions: tuple[str, ...]
    onset: float = Field(description="severity at half of the maximal change")
    amount: float = Field(description="maximal change (fractional loss, or SUVR increase)")


class SynthConfig(_Strict):
    """Every parameter of ``adfuse.synth.generate``. Unknown keys are a ConfigError."""

    # --- recruitment and demographics -------------------------------------------------------
    dx_mix: dict[str, float] = Field(
        default_factory=lambda: {"CN": 0.28, "SMC": 0.08, "EMCI": 0.22, "LMCI": 0.27, "AD": 0.15},
        description="baseline diagnosis mix; " + CALIBRATION_TARGETS["dx_mix"]["source"],
    )
    age_mean: float = Field(74.0, description=PETERSEN_2010)
    age_sd: float = Field(7.0, gt=0, description=PETERSEN_2010)
    age_min: float = Field(55.0, description="ADNI inclusion 55-90 (" + ADNI_PROCEDURES + ")")
    age_max: float = Field(91.0)
    female_fraction: float = Field(0.47, ge=0, le=1, description=PETERSEN_2010)
    education_mean: float = Field(15.6, description=PETERSEN_2010)
    education_sd: float = Field(2.9, gt=0, description=PETERSEN_2010)
    education_min: int = 6
    education_max: int = 20
    n_sites: int = Field(50, ge=1, le=60, description="about 50-60 ADNI sites")
    protocol_share: dict[str, float] = Field(
        default_factory=lambda: {"ADNI1": 0.45, "ADNI2": 0.40, "ADNI3": 0.15},
        description="protocol of CN/LMCI/AD recruits; SMC and EMCI exist from ADNI-GO/2 on",
    )
    adni1_extended_share: float = Field(
        0.4, ge=0, le=1, description="ADNI-1 CN/MCI followed on to m48 (rollover into ADNI-GO/2)"
    )

    # --- genetics -----------------------------------------------------------------------------
    n_snps: int = Field(1200, ge=200, description="SNPs in the PLINK set")
    null_snp_share: float = Field(0.25, ge=0, lt=1, description="share of SNPs in null genes")
    n_causal: int = Field(15, ge=0, le=24, description="causal SNPs besides APOE, one per gene")
    causal_effect_min: float = Field(0.05, description="|beta| per allele, liability SD units")
    causal_effect_max: float = Field(0.12, description=LAMBERT_2013 + " (OR 1.1-1.2 per allele)")
    causal_protective_share: float = Field(0.4, ge=0, le=1)
    apoe4_frequency: float = Field(
        0.255, gt=0, lt=0.5, description="e4 allele frequency of the recruited population"
    )
    apoe2_frequency: float = Field(0.07, ge=0, lt=0.5)
    apoe4_effect: float = Field(0.52, description="liability per e4 copy; " + FARRER_1997)
    apoe44_extra: float = Field(
        0.0, description="extra liability of e4/e4 (0: additive reaches OR 12-15)"
    )
    apoe2_effect: float = Field(-0.3, description="liability per e2 copy (protective)")
    age_effect: float = Field(0.15, description="liability per 10 years of age above age_mean")
    residual: Literal["gumbel", "normal"] = Field(
        "gumbel",
        description="distribution of the non-genetic liability (SD 1). Right-skewed Gumbel makes "
        "e4 enrichment steeper from CN to MCI than from MCI to AD, as in ADNI (27/53/66 %)",
    )
    ld_rho: float = Field(0.8, ge=0, lt=1, description="AR(1) correlation of adjacent latents")
    ld_block_min: int = Field(4, ge=1)
    ld_block_max: int = Field(16, ge=1)
    maf_min: float = Field(0.05, gt=0, le=0.5)
    maf_max: float = Field(0.45, gt=0, le=0.5)
    rare_share: float = Field(0.05, ge=0, le=1, description="SNPs with MAF 0.005-0.05")
    missing_call_rate: float = Field(0.01, ge=0, lt=1)

    # --- disease process ------------------------------------------------------------------------
    dx_noise_sd: float = Field(0.45, ge=0, description="clinician variability eta (severity SD)")
    rate_base: float = Field(0.01, description="progression rate at low severity (SD/year)")
    rate_gain: float = Field(0.9, description="added rate at high severity (SD/year)")
    rate_center: float = Field(0.58, description="severity at half of rate_gain")
    rate_width: float = Field(0.3, gt=0)
    rate_apoe4: float = Field(0.03, description="added rate per e4 copy (SD/year)")
    rate_noise_sd: float = Field(0.35, ge=0, description="log-normal subject variation of the rate")
    rate_amyloid_share: float = Field(
        0.6, ge=0, le=1, description="correlation of that variation with the amyloid factor"
    )
    dropout_per_year: float = Field(0.09, ge=0, lt=1, description=ADNI_PROCEDURES)
    dropout_dementia_factor: float = Field(1.8, ge=1, description="dropout hazard x in dementia")

    # --- cognitive scores ---------------------------------------------------------------------
    # Knots fitted by scripts/calibrate_synth.py (least squares on a large sample) so that the
    # baseline group means and SDs meet CALIBRATION_TARGETS (MMSE, CDR-SB, ADAS11: Petersen 2010;
    # ADAS13, RAVLT, FAQ: ADNIMERGE) and CDR-SB changes over 24 months as reported for ADNI-1,
    # with the progression rates above (tuned to the MCI conversion rate).
    mmse: ScoreModel = Field(
        ScoreModel(
            knots=(-3.0, -1.0, -0.3, 0.3, 1.0, 1.6, 2.5, 4.0, 6.0),
            mean=(30.2, 29.66, 28.42, 26.49, 24.7, 23.18, 21.34, 18.3, 12.95),
            sd=(0.5, 0.6, 0.8, 1, 1.2, 1.3, 1.5, 2, 2),
            per_education_year=0.1,
            low=0,
            high=30,
        ),
        description="MMSE 0-30; CN 29.1, MCI 27.0, AD 23.3 (" + PETERSEN_2010 + ")",
    )
    cdrsb: ScoreModel = Field(
        ScoreModel(
            knots=(-3.0, -0.7, -0.3, 0.2, 1.0, 1.6, 2.5, 4.0, 6.0),
            mean=(0, 0.04, 0.35, 1.75, 3.19, 4.33, 5.88, 8.61, 13.21),
            sd=(0.01, 0.03, 0.11, 0.33, 0.42, 0.59, 0.9, 1.8, 2.5),
            trait_share=0.6,
            low=0,
            high=18,
            step=0.5,
        ),
        description="CDR-SB 0-18 by 0.5; CN 0.03, MCI 1.6, AD 4.3 (" + PETERSEN_2010 + ")",
    )
    adas13: ScoreModel = Field(
        ScoreModel(
            knots=(-3.0, -1.0, 0.0, 1.0, 1.6, 2.5, 4.0, 6.0),
            mean=(5, 6.7, 17.75, 26.09, 29.89, 33.15, 37.67, 44.84),
            sd=(2.02, 2.58, 3.3, 4.59, 6.56, 8.21, 9.44, 10.36),
            per_education_year=-0.35,
            low=0,
            high=85,
            step=1 / 3,
        ),
        description="ADAS-Cog 13 0-85; CN 9.5, MCI 18.6, AD 28.9 (" + ADNIMERGE_SUMMARY + ")",
    )
    adas_delta: ScoreModel = Field(
        ScoreModel(
            knots=(-3.0, -1.0, 0.0, 1.0, 1.6, 3.0),
            mean=(1.5, 2.1, 6.88, 10.09, 10.91, 11.11),
            sd=(0.83, 0.87, 0.99, 1.25, 1.84, 2.5),
            low=0,
            high=15,
            step=1 / 3,
        ),
        description="ADAS13 - ADAS11 (delayed recall + number cancellation, 0-15); ADAS11 CN 6.2, MCI 11.5, AD 18.6 ("
        + PETERSEN_2010
        + ")",
    )
    ravlt: ScoreModel = Field(
        ScoreModel(
            knots=(-3.0, -1.0, 0.0, 1.0, 1.6, 3.0, 6.0),
            mean=(52, 47.91, 29.41, 24.55, 22.51, 20.11, 15.65),
            sd=(8.33, 6.8, 6.45, 6.95, 7.27, 7.57, 6.28),
            per_education_year=0.6,
            low=0,
            high=75,
        ),
        description="RAVLT immediate 0-75; CN 43.3, MCI 30.7, AD 23.2 (" + ADNIMERGE_SUMMARY + ")",
    )
    faq: ScoreModel = Field(
        ScoreModel(
            knots=(-3.0, -0.7, -0.3, 0.2, 1.0, 1.6, 2.5, 4.0),
            mean=(0, 0.12, 0.76, 3.78, 9.07, 13.67, 18.4, 24.3),
            sd=(0.01, 0.1, 0.58, 2.29, 6.68, 5.89, 4.08, 2.83),
            trait_share=0.6,
            low=0,
            high=30,
        ),
        description="FAQ 0-30; CN 0.1, MCI 3.9, AD 13.0 (" + ADNIMERGE_SUMMARY + ")",
    )
    score_missing_rate: float = Field(0.03, ge=0, lt=1, description="per score and visit, MCAR")

    # --- images: atrophy (T1, FLAIR) ----------------------------------------------------------
    atrophy_stages: tuple[RegionStage, ...] = (
        RegionStage(regions=("hippocampus", "entorhinal"), onset=0.3, amount=0.26),
        RegionStage(
            regions=("amygdala", "parahippocampal", "inferiortemporal", "fusiform"),
            onset=0.9,
            amount=0.22,
        ),
        RegionStage(
            regions=(
                "middletemporal",
                "temporalpole",
                "bankssts",
                "inferiorparietal",
                "supramarginal",
                "superiorparietal",
                "precuneus",
                "posteriorcingulate",
                "isthmuscingulate",
            ),
            onset=1.6,
            amount=0.16,
        ),
        RegionStage(regions=FRONTAL, onset=2.3, amount=0.12),
    )
    atrophy_width: float = Field(0.55, gt=0, description="logistic width of every atrophy curve")
    atrophy_age_per_year: float = Field(0.005, description="global grey-matter loss per year")
    ventricle_growth: float = Field(
        0.6, ge=0, le=1, description="share of the periventricular rim turning to CSF at high s"
    )
    ventricle_onset: float = Field(1.0, description="severity at half of ventricle_growth")
    anatomy_sd: float = Field(0.06, ge=0, description="subject variation of regional volumes")
    mri_noise_sd: float = Field(3.0, ge=0, description="T1/FLAIR noise SD (grey matter = 70)")
    bias_field_amplitude: float = Field(0.06, ge=0, description="smooth multiplicative bias")
    site_scale_sd: float = Field(0.08, ge=0, description="log-SD of a site's intensity scale")
    site_noise_sd: float = Field(0.25, ge=0, description="log-SD of a site's noise level")
    wmh_base_ml: float = Field(2.0, ge=0, description="FLAIR white-matter lesion volume at 74")
    wmh_age_per_year: float = Field(0.07, description="log-increase of lesion load per year")
    wmh_per_severity: float = Field(0.35, description="log-increase per severity unit")

    # --- PET --------------------------------------------------------------------------------------
    amyloid_width: float = Field(0.45, gt=0)
    amyloid_apoe4_shift: float = Field(0.35, description="earlier onset per e4 copy")
    amyloid_subject_sd: float = Field(
        1.5, ge=0, description="amyloid onset varies by subject (about 30 % of CN positive)"
    )
    amyloid_regions: RegionStage = RegionStage(
        regions=(
            "precuneus",
            "posteriorcingulate",
            "isthmuscingulate",
            "caudalanteriorcingulate",
            "rostralanteriorcingulate",
            "medialorbitofrontal",
            "lateralorbitofrontal",
            "superiorfrontal",
            "rostralmiddlefrontal",
            "caudalmiddlefrontal",
            "middletemporal",
            "inferiortemporal",
            "superiortemporal",
            "bankssts",
            "inferiorparietal",
            "supramarginal",
            "superiorparietal",
        ),
        onset=0.75,  # with the subject spread, positivity starts in CN (Jack 2010/2013)
        amount=0.5,
    )
    amyloid_other_cortex: float = Field(0.35, description="share of the increase elsewhere")
    amyloid_cutoff: float = Field(1.11, description="composite SUVR positivity; " + LANDAU_2012)
    tau_stages: tuple[RegionStage, ...] = (
        RegionStage(regions=("entorhinal", "hippocampus"), onset=0.2, amount=0.8),
        RegionStage(
            regions=(
                "amygdala",
                "parahippocampal",
                "fusiform",
                "inferiortemporal",
                "middletemporal",
            ),
            onset=1.0,
            amount=0.8,
        ),
        RegionStage(regions=("*cortex",), onset=1.9, amount=0.6),
    )
    tau_width: float = Field(0.4, gt=0, description=BRAAK_1991)
    fdg_regions: RegionStage = RegionStage(
        regions=(
            "posteriorcingulate",
            "isthmuscingulate",
            "precuneus",
            "inferiorparietal",
            "supramarginal",
            "middletemporal",
            "inferiortemporal",
            "entorhinal",
            "hippocampus",
        ),
        onset=0.8,
        amount=0.25,
    )
    fdg_width: float = Field(0.6, gt=0, description=JACK_2010)
    pet_fwhm_mm: float = Field(7.0, gt=0, description="PET resolution after ADNI processing")
    pet_noise_sd: float = Field(0.05, ge=0, description="PET voxel noise (SUVR units)")
    pet_region_sd: float = Field(0.03, ge=0, description="PET regional subject variation")

    # --- resting-state fMRI ------------------------------------------------------------------------
    fmri_timepoints: int = Field(140, ge=10, description="ADNI-2/3 resting state: 140 volumes")
    fmri_tr: float = Field(3.0, gt=0, description="ADNI-2/3 resting state TR 3 s")
    dmn_regions: tuple[str, ...] = Field(
        (
            "posteriorcingulate",
            "isthmuscingulate",
            "precuneus",
            "medialorbitofrontal",
            "rostralanteriorcingulate",
            "inferiorparietal",
            "hippocampus",
            "parahippocampal",
            "middletemporal",
        ),
        description=GREICIUS_2004,
    )
    dmn_coupling: float = Field(0.8, description="DMN loading in a healthy subject")
    dmn_loss: float = Field(0.7, ge=0, le=1, description="share of DMN coupling lost")
    dmn_onset: float = Field(0.5)
    network_coupling: float = Field(0.7, description="loading of the other networks")
    fmri_noise_ar: float = Field(0.3, ge=0, lt=1, description="AR(1) of regional noise")
    fmri_network_ar: float = Field(0.6, ge=0, lt=1, description="AR(1) of network signals")

    # --- availability --------------------------------------------------------------------------
    availability: dict[str, float] = Field(
        default_factory=lambda: {
            "genotype": 0.85,
            "t1": 0.97,
            "flair": 0.55,
            "amyloid": 0.60,
            "tau": 0.25,
            "fdg": 0.55,
            "fmri": 0.35,
            "notes": 0.90,
        },
        description="share of subjects with each modality (ADNI-like)",
    )
    notes_visit_rate: float = Field(0.95, ge=0, le=1, description="visits with a note")
    missing_not_at_random: bool = Field(False, description="PET/fMRI missing more at high s")
    mnar_strength: float = Field(0.8, ge=0, description="log-odds of missing per severity unit")
    image_visits: tuple[str, ...] = Field(("bl",), description="visits with images")

    @model_validator(mode="after")
    def _check(self) -> SynthConfig:
        if set(self.dx_mix) != set(DX_CODES) or abs(sum(self.dx_mix.values()) - 1) > 1e-6:
            raise ValueError(f"dx_mix needs keys {DX_CODES} summing to 1")
        if set(self.protocol_share) != set(PROTOCOLS):
            raise ValueError(f"protocol_share needs keys {PROTOCOLS}")
        unknown = set(self.availability) - set(AVAILABILITY_KEYS)
        if unknown:
            raise ValueError(f"availability: unknown modality {sorted(unknown)}")
        if any(not 0 <= rate <= 1 for rate in self.availability.values()):
            raise ValueError("availability rates must be in [0, 1]")
        if self.ld_block_max < self.ld_block_min or self.maf_max < self.maf_min:
            raise ValueError("ld_block_min/max or maf_min/max out of order")
        if not self.age_min < self.age_mean < self.age_max:
            raise ValueError("age_mean must lie between age_min and age_max")
        return self

    def rate(self, modality: str) -> float:
        return self.availability.get(modality, 1.0)


def make_config(overrides: dict | None = None, base: SynthConfig | None = None) -> SynthConfig:
    """Defaults (or ``base``) updated with overrides; a bad key or value is a ConfigError."""
    data = (base or SynthConfig()).model_dump()
    overrides = dict(overrides or {})
    for key in ("availability", "dx_mix", "protocol_share"):  # dicts merge key by key
        if isinstance(overrides.get(key), dict):
            overrides[key] = {**data[key], **overrides[key]}
    data.update(overrides)
    try:
        return SynthConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(config)"
        if first["type"] == "extra_forbidden":
            raise ConfigError(f"synth: unknown config key '{where}'") from None
        raise ConfigError(f"synth: {where}: {first['msg']}") from None
