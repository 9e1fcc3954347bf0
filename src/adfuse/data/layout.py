"""The dataset layout: modality names, file names, and the ADNI <-> BIDS (Clinica) naming rules.

One place for every naming convention, used by the readers and by the synthetic generator, so that
what ``adfuse synth`` writes is exactly what ``load_cohort`` reads.
"""

from __future__ import annotations

import re

# Modality names are fixed across the package, the CLI and run folders (DESIGN.md).
MODALITIES: tuple[str, ...] = (
    "clinical",
    "genotype",
    "t1",
    "flair",
    "amyloid",
    "tau",
    "fdg",
    "fmri",
    "notes",
    "freesurfer",
)
IMAGE_MODALITIES: tuple[str, ...] = ("t1", "flair", "amyloid", "tau", "fdg")
KINDS: dict[str, str] = {
    "clinical": "tabular",
    "genotype": "genotype",
    "t1": "volume",
    "flair": "volume",
    "amyloid": "volume",
    "tau": "volume",
    "fdg": "volume",
    "fmri": "timeseries",
    "notes": "text",
    "freesurfer": "tabular",
}

ADNIMERGE = "ADNIMERGE.csv"
GENOTYPES = "genotypes"  # + .bed .bim .fam
SNP_GENES_SUFFIX = ".genes.tsv"  # optional: genotypes.genes.tsv, columns snp, gene
RAWDATA = "rawdata"
ATLAS_IMAGE = "atlas/dseg.nii.gz"
ATLAS_TABLE = "atlas/dseg.tsv"
NOTES = "notes.jsonl"
TRUTH = "truth.json"
FREESURFER = (
    "derivatives/freesurfer"  # <FREESURFER>/sub-<ID>_ses-<SES>/stats/{aseg,lh.aparc,rh.aparc}.stats
)
CONFIG = "adfuse.toml"

# BIDS suffix patterns under a session folder, Clinica's adni-to-bids naming. Extra entities
# (``_run-01``, ``_rec-uniform``) are allowed; .nii and .nii.gz both count.
IMAGE_PATTERNS: dict[str, tuple[str, str]] = {
    "t1": ("anat", r"_T1w\.nii(\.gz)?$"),
    "flair": ("anat", r"_FLAIR\.nii(\.gz)?$"),
    # Amyloid tracers of ADNI: florbetapir (AV45), florbetaben (FBB), PiB.
    "amyloid": ("pet", r"_trc-(18FAV45|18FFBB|11CPIB)(_[^_]+)*_pet\.nii(\.gz)?$"),
    "tau": ("pet", r"_trc-18FAV1451(_[^_]+)*_pet\.nii(\.gz)?$"),
    "fdg": ("pet", r"_trc-18FFDG(_[^_]+)*_pet\.nii(\.gz)?$"),
    "fmri": ("func", r"_task-rest(_[^_]+)*_timeseries\.tsv$"),
}
# What the generator writes for each modality (suffix after sub-X_ses-Y).
IMAGE_SUFFIX: dict[str, str] = {
    "t1": "anat/{stem}_T1w.nii.gz",
    "flair": "anat/{stem}_FLAIR.nii.gz",
    "amyloid": "pet/{stem}_trc-18FAV45_pet.nii.gz",
    "tau": "pet/{stem}_trc-18FAV1451_pet.nii.gz",
    "fdg": "pet/{stem}_trc-18FFDG_pet.nii.gz",
    "fmri": "func/{stem}_task-rest_timeseries.tsv",
}

_ADNI_PTID = re.compile(r"^(\d{3})_S_(\d{4})$")
_MONTH_VISCODE = re.compile(r"^m(\d+)$")
_SESSION = re.compile(r"^ses-M(\d+)$")


def bids_subject(ptid: str) -> str:
    """BIDS participant label for an ADNI PTID: ``011_S_0002`` -> ``ADNI011S0002`` (Clinica)."""
    match = _ADNI_PTID.match(ptid)
    if match:
        return f"ADNI{match.group(1)}S{match.group(2)}"
    return re.sub(r"[^A-Za-z0-9]", "", ptid)


def viscode_month(viscode: str) -> int | None:
    """Months since baseline of an ADNI VISCODE (``bl`` -> 0, ``m06`` -> 6); None for others."""
    viscode = viscode.strip().lower()
    if viscode in ("bl", "sc", "scmri", "init"):
        return 0 if viscode == "bl" else None
    match = _MONTH_VISCODE.match(viscode)
    return int(match.group(1)) if match else None


def month_viscode(month: int) -> str:
    """``0`` -> ``bl``, ``6`` -> ``m06``, ``120`` -> ``m120`` (ADNIMERGE's spelling)."""
    return "bl" if month == 0 else f"m{month:02d}"


def session_label(viscode: str) -> str | None:
    """BIDS session of a VISCODE, Clinica's rule: ``bl`` -> ``ses-M000``, ``m06`` -> ``ses-M006``."""
    month = viscode_month(viscode)
    return None if month is None else f"ses-M{month:03d}"


def session_month(session: str) -> int | None:
    """``ses-M006`` -> 6; None when the folder name is not a Clinica session."""
    match = _SESSION.match(session)
    return int(match.group(1)) if match else None


def image_relpath(modality: str, ptid: str, viscode: str) -> str:
    """Where the generator writes one visit's file of an image or time-series modality."""
    subject, session = f"sub-{bids_subject(ptid)}", session_label(viscode)
    if session is None:
        raise ValueError(f"VISCODE {viscode!r} has no BIDS session")
    stem = f"{subject}_{session}"
    return f"{RAWDATA}/{subject}/{session}/" + IMAGE_SUFFIX[modality].format(stem=stem)
