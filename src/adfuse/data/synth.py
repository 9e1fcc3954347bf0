"""A calibrated synthetic ADNI-like cohort, written in the dataset layout of DESIGN.md.

::

    import adfuse.synth as synth
    path = synth.generate(out_dir, n_subjects=600, seed=0, size="small")
    latents = synth.sample_latents(n_subjects=20_000, seed=0)   # no files: for calibration

One latent disease process drives every modality. A continuous severity ``s`` (standard units at
baseline) is a sum of genetic liability (APOE e4/e2 and ~15 small planted SNP effects in AD genes),
age and a right-skewed residual; the baseline diagnosis thresholds ``s + eta`` (``eta``: clinician
variability, independent of every observed value) into CN < SMC < EMCI < LMCI < AD with the
configured mix. Severity grows at a subject rate ``r`` (faster at higher ``s``, with APOE e4 and
amyloid), giving later diagnoses, conversions and dropout. Scores, images (atrophy, amyloid, tau,
FDG, white-matter lesions), resting-state series and notes are noisy functions of ``s(t)``: no
modality alone reveals the diagnosis, and combining them helps. ``truth.json`` holds what was
planted; models never read it. Parameters and their sources: :class:`SynthConfig`; targets met:
``CALIBRATION_TARGETS`` (checked in tests/unit/test_synth.py).

Availability follows the configured ADNI-like rates per subject; with ``n_subjects >= 100`` a few
subjects are then reassigned so that each of the 16 patterns of {t1, flair, amyloid, tau} (none
included) occurs at least 3 times (with 100-200 subjects this visibly lowers the T1 rate).

Files are written in a temporary sibling folder and renamed into place, so a dataset is complete
or absent. The same arguments give byte-identical files (gzip headers carry no time or name).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from adfuse.data import _synth_images as images
from adfuse.data import layout
from adfuse.data._synth_config import CALIBRATION_TARGETS, SynthConfig, make_config
from adfuse.data._synth_latent import (
    AD_GENES,
    NULL_GENES,
    Simulation,
    simulate,
    simulate_genotypes,
    stream,
)
from adfuse.data._synth_notes import BANNED_WORDS, write_note
from adfuse.errors import ConfigError
from adfuse.io import atomic_directory

__all__ = [
    "CALIBRATION_TARGETS",
    "GENERATED_MODALITIES",
    "SynthConfig",
    "generate",
    "make_config",
    "sample_latents",
    "BANNED_WORDS",
]

GENERATED_MODALITIES: tuple[str, ...] = (
    "clinical",
    "genotype",
    "t1",
    "flair",
    "amyloid",
    "tau",
    "fdg",
    "fmri",
    "notes",
)
SCORE_COLUMNS = ("CDRSB", "ADAS11", "ADAS13", "MMSE", "RAVLT_immediate", "FAQ")
ADNIMERGE_COLUMNS = (
    "RID", "COLPROT", "ORIGPROT", "PTID", "SITE", "VISCODE", "EXAMDATE", "DX_bl", "AGE",
    "PTGENDER", "PTEDUCAT", "PTETHCAT", "PTRACCAT", "PTMARRY", "APOE4", *SCORE_COLUMNS, "DX",
    "Month",
)  # fmt: skip
_FORMATS = {"AGE": "{:.1f}", "CDRSB": "{:.1f}", "ADAS11": "{:.2f}", "ADAS13": "{:.2f}"}


def sample_latents(
    config: SynthConfig | dict | None = None, n_subjects: int = 600, seed: int = 0, **overrides
) -> pd.DataFrame:
    """The latent table ``generate`` writes from, without any file: one row per planned visit.

    Columns: subject data (RID, PTID, DX_bl, group = CN/MCI/AD at baseline, AGE, PTGENDER, PTEDUCAT,
    APOE4, apoe2, G, severity_bl, rate, eta, amyloid_shift, has_<modality>), visit data (Month,
    VISCODE, observed = kept after dropout, severity = s(t), dx_code, DX, amyloid_load) and complete
    scores (no missing values). ``attrs["thresholds"]`` holds the diagnosis thresholds on s + eta.
    """
    simulation = _simulate(config, n_subjects, seed, overrides)
    table = simulation.visits.copy()
    table.attrs["thresholds"] = simulation.thresholds
    return table


def generate(
    out_dir: str | Path,
    n_subjects: int = 600,
    seed: int = 0,
    size: str = "small",
    progress: bool = False,
    *,
    modalities: tuple[str, ...] | list[str] | None = None,
    force: bool = False,
    **config_overrides,
) -> Path:
    """Write a synthetic cohort into ``out_dir`` and return that path.

    ``size``: image grid, ``small`` (3 mm), ``medium`` (2 mm) or ``paper`` (1 mm). ``modalities``:
    which of ``GENERATED_MODALITIES`` to write (default all; ADNIMERGE.csv, the atlas and truth.json
    are always written). A non-empty ``out_dir`` is refused unless ``force``. Further keyword
    arguments override :class:`SynthConfig` fields (an unknown one is a ConfigError).
    """
    out_dir = Path(out_dir)
    if size not in images.SIZES:
        raise ConfigError(f"synth: size must be one of {', '.join(images.SIZES)} (got {size!r})")
    chosen = _check_modalities(modalities)
    if n_subjects < 1 or seed < 0:
        raise ConfigError(f"synth: need n_subjects >= 1 and seed >= 0 (got {n_subjects}, {seed})")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"synth: {out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise ConfigError(f"synth: {out_dir} is not empty; replace it with --force (force=True)")

    simulation = _simulate(None, n_subjects, seed, config_overrides)
    # a temporary sibling renamed into place (what a killed synth left there is removed first)
    with atomic_directory(out_dir, force=True) as work:
        _write_all(work, simulation, size, chosen, progress)
    return out_dir


def _simulate(config, n_subjects: int, seed: int, overrides: dict) -> Simulation:
    if isinstance(config, SynthConfig):
        config = make_config(overrides, base=config)
    else:
        config = make_config({**(config or {}), **overrides})
    return simulate(config, int(n_subjects), int(seed))


def _check_modalities(modalities) -> tuple[str, ...]:
    if modalities is None:
        return GENERATED_MODALITIES
    if isinstance(modalities, str):
        modalities = (modalities,)
    unknown = [m for m in modalities if m not in GENERATED_MODALITIES]
    if unknown:
        raise ConfigError(
            f"synth: unknown modality {unknown[0]!r}; choose from {', '.join(GENERATED_MODALITIES)}"
        )
    return tuple(m for m in GENERATED_MODALITIES if m in modalities)


# --- writers -------------------------------------------------------------------------------------


def _write_all(root: Path, simulation: Simulation, size: str, chosen, progress: bool) -> None:
    adnimerge = _adnimerge(simulation)
    (root / layout.ADNIMERGE).write_text(adnimerge.to_csv(index=False, lineterminator="\n"))
    atlas = images.load_atlas(size)
    (root / layout.ATLAS_IMAGE).parent.mkdir(parents=True)
    (root / layout.ATLAS_IMAGE).write_bytes(atlas.image_bytes)
    (root / layout.ATLAS_TABLE).write_bytes(atlas.table_bytes)
    if "genotype" in chosen:
        _write_genotypes(root, simulation)
    if "notes" in chosen:
        _write_notes(root, simulation, adnimerge)
    if any(m in chosen for m in (*layout.IMAGE_MODALITIES, "fmri")):
        _write_images(root, simulation, atlas, chosen, progress)
    truth = _truth(simulation, size, chosen, atlas)
    (root / layout.TRUTH).write_text(json.dumps(truth, indent=1, allow_nan=False) + "\n")


def _adnimerge(simulation: Simulation) -> pd.DataFrame:
    """Observed visits, ADNIMERGE columns and codings, a few scores missing at random."""
    visits = simulation.visits[simulation.visits["observed"]].reset_index(drop=True)
    table = visits[list(ADNIMERGE_COLUMNS)].copy()
    table["EXAMDATE"] = visits["EXAMDATE"].astype(str)
    rng = stream(simulation.seed, "scores_missing")
    missing = rng.random((len(table), len(SCORE_COLUMNS))) < simulation.config.score_missing_rate
    for k, column in enumerate(SCORE_COLUMNS):
        fmt = _FORMATS.get(column, "{:d}")
        values = table[column].to_numpy()
        table[column] = [
            "" if gone else fmt.format(value)
            for value, gone in zip(values.tolist(), missing[:, k], strict=True)
        ]
    table["AGE"] = [_FORMATS["AGE"].format(age) for age in table["AGE"].tolist()]
    return table


def _write_genotypes(root: Path, simulation: Simulation) -> None:
    import bed_reader

    subjects = simulation.subjects.sort_values("RID", kind="stable")
    subjects = subjects[subjects["has_genotype"]]
    if subjects.empty:  # nobody genotyped: no PLINK set at all (absent is normal)
        return
    panel, config = simulation.panel, simulation.config
    dosages, rows = simulate_genotypes(panel, config, len(simulation.subjects), simulation.seed)
    order = np.argsort(rows)
    dosages = dosages[subjects["subject_index"].to_numpy()][:, order]
    rng = stream(simulation.seed, "missing_calls")
    dosages[rng.random(dosages.shape) < config.missing_call_rate] = -127
    snps = panel.snps
    bed_reader.to_bed(
        root / f"{layout.GENOTYPES}.bed",
        dosages,
        properties={
            "fid": subjects["PTID"].tolist(),
            "iid": subjects["PTID"].tolist(),
            "sex": np.where(subjects["PTGENDER"] == "Male", 1, 2).tolist(),
            "pheno": ["-9"] * len(subjects),
            "chromosome": snps["chromosome"].tolist(),
            "sid": snps["snp"].tolist(),
            "bp_position": snps["position"].tolist(),
            "allele_1": snps["allele_1"].tolist(),
            "allele_2": snps["allele_2"].tolist(),
        },
        count_A1=True,
        num_threads=1,
    )
    # SNP -> gene annotation (what a user would make from dbSNP/Ensembl for a real .bim)
    annotation = "snp\tgene\n" + "".join(
        f"{snp}\t{gene}\n" for snp, gene in zip(snps["snp"], snps["gene"], strict=True)
    )
    (root / f"{layout.GENOTYPES}{layout.SNP_GENES_SUFFIX}").write_text(annotation, encoding="utf-8")


def _write_notes(root: Path, simulation: Simulation, adnimerge: pd.DataFrame) -> None:
    visits = simulation.visits[simulation.visits["observed"]].reset_index(drop=True)
    lines = []
    for index, group in visits.groupby("subject_index", sort=False):
        if not group["has_notes"].iloc[0]:
            continue
        rng = stream(simulation.seed, "notes", int(index))
        for row in group.itertuples():
            if rng.random() >= simulation.config.notes_visit_rate:
                continue
            mmse = adnimerge.at[row.Index, "MMSE"]
            text = write_note(rng, row.severity, int(row.Month), float(mmse) if mmse else None)
            record = {"PTID": row.PTID, "VISCODE": row.VISCODE, "text": text}
            lines.append(json.dumps(record, ensure_ascii=False))
    if lines:
        (root / layout.NOTES).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_images(root: Path, simulation: Simulation, atlas, chosen, progress: bool) -> None:
    """Volumes and series of the image visits. Rendering runs here; encoding and writing run in
    two threads (zlib releases the GIL), at most a few files ahead."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    config, seed = simulation.config, simulation.seed
    sites = images.site_effects(config, seed)
    visits = simulation.visits
    visits = visits[visits["observed"] & visits["VISCODE"].isin(config.image_visits)]
    by_subject = visits.groupby("subject_index", sort=False)
    bar = tqdm(
        by_subject, total=by_subject.ngroups, disable=not progress, unit="subject", desc="images"
    )
    pending: list = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for index, group in bar:
            index = int(index)
            site = sites.loc[int(group["SITE"].iloc[0])]
            anatomy = images.anatomy(atlas, config, seed, index)
            for visit in group.itertuples():
                for modality in ("t1", "flair", "amyloid", "tau", "fdg", "fmri"):
                    if modality not in chosen or not getattr(visit, f"has_{modality}"):
                        continue
                    path = root / layout.image_relpath(modality, visit.PTID, visit.VISCODE)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    rng = stream(seed, modality, index, int(visit.Month))
                    job = _render(modality, atlas, config, rng, anatomy, visit, site)
                    pending.append(pool.submit(_encode_and_write, path, atlas, *job))
                    if len(pending) > 8:
                        pending.pop(0).result()
        for future in pending:
            future.result()


def _render(modality, atlas, config, rng, anatomy, visit, site) -> tuple:
    """(kind, data, step) for one file: a series (kind 'tsv') or a volume and its quantum."""
    if modality == "fmri":
        return "tsv", images.render_fmri(atlas, config, rng, visit.severity, site), 0.0
    if modality in ("t1", "flair"):
        age = float(visit.AGE) + visit.Month / 12
        volume = images.volumes(atlas, config, anatomy, visit.severity, age)
        image = images.render_mri(modality, atlas, config, rng, volume, site, visit.severity, age)
        return "nifti", image, 1.0
    values = images.pet_values(modality, atlas, config, visit.severity, visit.amyloid_load, rng)
    image = images.render_pet(modality, atlas, config, rng, values, site)
    return "nifti", image, images.PET_STEP[modality]


def _encode_and_write(path: Path, atlas, kind: str, data: np.ndarray, step: float) -> None:
    if kind == "tsv":
        path.write_text(images.timeseries_text(atlas, data))
    else:
        path.write_bytes(images.nifti_bytes(atlas, data, step))


def _truth(simulation: Simulation, size: str, chosen, atlas) -> dict:
    """What was planted, for evaluation only (models never read it)."""
    config = simulation.config
    panel = simulation.panel
    causal = panel.causal
    subjects = simulation.subjects.sort_values("RID", kind="stable").copy()
    for modality in ("genotype", "t1", "flair", "amyloid", "tau", "fdg", "fmri", "notes"):
        subjects[f"has_{modality}"] &= modality in chosen  # what was written
    visits = simulation.visits[simulation.visits["observed"]]

    def full_names(regions) -> list[str]:
        codes = atlas.codes_of(tuple(regions))
        return [atlas.names[c - 1] for c in codes]

    subject_columns = [
        "PTID", "RID", "subject_index", "DX_bl", "group", "SITE", "COLPROT", "APOE4", "apoe2",
        "G", "severity_bl", "rate", "eta", "amyloid_shift",
        *[c for c in subjects.columns if c.startswith("has_")],
    ]  # fmt: skip
    visit_columns = ["PTID", "VISCODE", "Month", "severity", "dx_code", "DX", "amyloid_load"]
    return {
        "generator": "adfuse.data.synth",
        "seed": simulation.seed,
        "n_subjects": len(subjects),
        "size": size,
        "modalities": list(chosen),
        "config": config.model_dump(mode="json"),
        "calibration_targets": CALIBRATION_TARGETS,
        "severity": {
            "definition": "s = (G_raw + age_effect*(age-age_mean)/10 + residual - mean) / sd; "
            "diagnosis from s + eta; s(t) = severity_bl + rate * years",
            "scale_mean": simulation.scale[0],
            "scale_sd": simulation.scale[1],
            "thresholds": dict(
                zip(
                    ("CN|SMC", "SMC|EMCI", "EMCI|LMCI", "LMCI|AD"),
                    simulation.thresholds,
                    strict=True,
                )
            ),
        },
        "genetics": {
            "liability": "G_raw = sum(beta * minor-allele dosage) + apoe44_extra * [e4/e4]",
            "causal_snps": [
                {
                    "snp": row.snp,
                    "gene": row.gene,
                    "chromosome": row.chromosome,
                    "position": int(row.position),
                    "allele_1": row.allele_1,
                    "maf": round(float(row.maf), 6),
                    "beta": round(float(row.beta), 6),
                }
                for row in causal.itertuples()
            ],
            "apoe": {
                "e4_snp": "rs429358",
                "e2_snp": "rs7412",
                "e4_frequency": config.apoe4_frequency,
                "e2_frequency": config.apoe2_frequency,
                "e44_extra": config.apoe44_extra,
            },
            "ad_genes": list(AD_GENES),
            "null_genes": list(NULL_GENES),
        },
        "regions": {
            "atrophy_stages": [
                {"regions": full_names(s.regions), "onset": s.onset, "max_loss": s.amount}
                for s in config.atrophy_stages
            ],
            "amyloid": {
                "regions": full_names(config.amyloid_regions.regions),
                "onset": config.amyloid_regions.onset,
            },
            "tau_braak": [
                {"stage": name, "regions": full_names(s.regions), "onset": s.onset}
                for name, s in zip(("I-II", "III-IV", "V-VI"), config.tau_stages, strict=False)
            ],
            "fdg": {
                "regions": full_names(config.fdg_regions.regions),
                "onset": config.fdg_regions.onset,
            },
            "default_mode": full_names(config.dmn_regions),
            "networks": {k: full_names(v) for k, v in images.NETWORKS.items()},
        },
        "subjects": _records(subjects[subject_columns]),
        "visits": _records(visits[visit_columns]),
    }


def _records(frame: pd.DataFrame) -> list[dict]:
    rounded = frame.copy()
    for column in rounded.columns:
        if rounded[column].dtype.kind == "f":
            rounded[column] = rounded[column].round(6)
    return json.loads(rounded.to_json(orient="records"))
