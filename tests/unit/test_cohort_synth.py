"""Every reader on what the generator writes: the synthetic cohort loads with every modality."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

import adfuse
from adfuse.data import layout


def test_every_modality_reads_back(synth_small):
    cohort = adfuse.load_cohort(synth_small)
    expected = ("clinical", "genotype", "t1", "flair", "amyloid", "tau", "fdg", "fmri", "notes")
    assert cohort.modalities == expected
    assert len(cohort.subjects) == 120
    assert not cohort.warnings
    files = sorted((synth_small / "rawdata").rglob("*_T1w.nii.gz"))
    assert int(cohort.visit_availability["t1"].sum()) == len(files)
    spec = cohort.spec
    assert spec["t1"].shape == cohort.atlas.shape and len(spec["t1"].feature_names) == 83
    assert spec["fmri"].shape[1] == 83
    subject = cohort.availability.index[
        cohort.availability[["t1", "fmri", "genotype", "notes"]].all(axis=1)
    ][0]
    volume = cohort.read_volume("t1", subject)
    assert volume.shape == cohort.atlas.shape and np.isfinite(volume).all()
    series = cohort.read_timeseries(subject)
    assert series.shape[1] == 83 and series.shape[0] == spec["fmri"].shape[0]
    dosages = cohort.read_genotypes([subject])
    assert np.nanmax(dosages) <= 2 and np.nanmin(dosages) >= 0
    assert isinstance(cohort.note(subject), str)


def test_truth_is_consistent_with_the_files(synth_small):
    cohort = adfuse.load_cohort(synth_small)
    truth = json.loads((synth_small / layout.TRUTH).read_text())
    snps = set(cohort.spec["genotype"].feature_names)
    causal = truth["genetics"]["causal_snps"]
    assert causal and all(item["snp"] in snps for item in causal)
    groups = cohort.spec["genotype"].groups
    for item in causal:
        assert item["snp"] in groups[item["gene"]]
    # the clinical APOE4 column is the genotype dosage of rs429358 where genotyped
    genotyped = [s for s in cohort.subjects if cohort.availability.at[s, "genotype"]]
    dosage = cohort.read_genotypes(genotyped, ["rs429358"])[:, 0]
    apoe = cohort.baseline.loc[genotyped, "APOE4"].to_numpy()
    called = ~np.isnan(dosage)
    assert (dosage[called] == apoe[called]).mean() > 0.99


def test_diagnoses_and_visits_are_adni_like(synth_small):
    table = adfuse.load_cohort(synth_small).table
    assert set(table["DX_bl"].dropna()) == {"CN", "SMC", "EMCI", "LMCI", "AD"}
    assert set(table["DX"].dropna()) <= {"CN", "MCI", "Dementia"}
    assert {"bl", "m12", "m24"} <= set(table["VISCODE"])
    assert pd.api.types.is_integer_dtype(table["MONTH"])
