"""The synthetic cohort: calibration against ADNI figures, files, determinism, safety.

Calibration figures are checked on ``sample_latents`` (the table ``generate`` writes from) with
20,000 subjects; file-level behaviour on small generated cohorts.
"""

from __future__ import annotations

import hashlib
import json
import re

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from bed_reader import open_bed

from adfuse.data import layout, synth
from adfuse.data._synth_config import CALIBRATION_TARGETS, SynthConfig
from adfuse.errors import ConfigError

GROUP = {"CN": "CN", "SMC": "CN", "EMCI": "MCI", "LMCI": "MCI", "AD": "AD"}


@pytest.fixture(scope="module")
def latents() -> pd.DataFrame:
    return synth.sample_latents(n_subjects=20_000, seed=11)


@pytest.fixture(scope="module")
def baseline(latents) -> pd.DataFrame:
    return latents[latents["Month"] == 0].set_index("RID")


@pytest.fixture(scope="module")
def t1_cohort(tmp_path_factory):
    """400 subjects, clinical table and T1 only: enough for image-level group statistics."""
    out = tmp_path_factory.mktemp("synth_t1") / "cohort"
    return synth.generate(out, n_subjects=400, seed=3, modalities=("clinical", "t1"))


def read_adnimerge(root) -> pd.DataFrame:
    return pd.read_csv(root / layout.ADNIMERGE, dtype=str, keep_default_na=False)


def tree_digest(root) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


# --- calibration (sample_latents, 20,000 subjects) ------------------------------------------------


def test_baseline_diagnosis_mix_matches_the_target(baseline):
    mix = baseline["DX_bl"].value_counts(normalize=True)
    for code, share in CALIBRATION_TARGETS["dx_mix"]["target"].items():
        assert mix[code] == pytest.approx(share, abs=0.015), code


def test_demographics_match_adni1(baseline):
    assert baseline["AGE"].mean() == pytest.approx(74.0, abs=0.5)
    assert 6.2 < baseline["AGE"].std() < 7.2  # N(74, 7) truncated to 55-91
    assert baseline["AGE"].between(55, 91).all()
    assert (baseline["PTGENDER"] == "Female").mean() == pytest.approx(0.47, abs=0.02)
    assert baseline["PTEDUCAT"].mean() == pytest.approx(15.6, abs=0.3)
    assert baseline["PTEDUCAT"].std() == pytest.approx(2.9, abs=0.3)
    assert baseline["PTEDUCAT"].between(6, 20).all()


def test_apoe4_carrier_rates_and_odds_ratios(baseline):
    carriers = (baseline["APOE4"] > 0).groupby(baseline["group"]).mean()
    assert 0.25 <= carriers["CN"] <= 0.31
    assert 0.45 <= carriers["MCI"] <= 0.55
    assert 0.58 <= carriers["AD"] <= 0.67
    cn, ad = baseline[baseline["group"] == "CN"], baseline[baseline["group"] == "AD"]

    def odds_ratio(copies: int) -> float:
        def odds(table):
            return (table["APOE4"] == copies).sum() / (table["APOE4"] == 0).sum()

        return odds(ad) / odds(cn)

    assert 2.5 <= odds_ratio(1) <= 3.8  # Farrer 1997: 3.2
    assert 9.0 <= odds_ratio(2) <= 20.0  # Farrer 1997: 14.9


@pytest.mark.parametrize(
    ("score", "tolerance"),
    [("MMSE", 0.3), ("CDRSB", 0.3), ("ADAS13", 1.0), ("ADAS11", 1.0), ("RAVLT_immediate", 1.5)],
)
def test_baseline_score_means_and_spreads_by_group(baseline, score, tolerance):
    target = CALIBRATION_TARGETS[score.lower()]["target"]
    stats = baseline.groupby("group")[score].agg(["mean", "std"]).reindex(["CN", "MCI", "AD"])
    for group in ("CN", "MCI", "AD"):
        mean, sd = target[group]
        assert stats.loc[group, "mean"] == pytest.approx(mean, abs=tolerance), group
        if group != "CN" or score != "CDRSB":  # CN CDR-SB spread comes from clinician noise
            assert stats.loc[group, "std"] == pytest.approx(sd, rel=0.35), group
    assert stats["mean"].is_monotonic_increasing or stats["mean"].is_monotonic_decreasing


def test_scores_keep_their_ranges_and_steps(latents):
    assert latents["MMSE"].between(0, 30).all()
    assert latents["CDRSB"].between(0, 18).all()
    assert np.allclose(latents["CDRSB"] * 2, np.round(latents["CDRSB"] * 2))
    assert (latents["ADAS13"] >= latents["ADAS11"]).all()
    assert latents["ADAS13"].between(0, 85).all()
    assert latents["FAQ"].between(0, 30).all()


def test_mci_to_dementia_conversion_is_about_16_percent_per_year(latents):
    """Events per person-year over 36 months of planned visits (event = first Dementia visit)."""
    mci = latents[(latents["group"] == "MCI") & (latents["Month"] <= 36)]
    first = mci[mci["DX"] == "Dementia"].groupby("RID")["Month"].min()
    last = mci.groupby("RID")["Month"].max()
    years = last.copy()
    years[first.index] = first
    rate = len(first) / (years.sum() / 12)
    assert 0.14 <= rate <= 0.19


def test_cdrsb_change_over_24_months_by_group(latents):
    wide = latents.pivot_table(index="RID", columns="Month", values="CDRSB")
    group = latents.groupby("RID")["group"].first()
    change = (wide[24] - wide[0]).dropna().groupby(group).mean()
    assert 0.03 <= change["CN"] <= 0.3
    assert 0.9 <= change["MCI"] <= 1.7
    assert 2.5 <= change["AD"] <= 3.5


def test_about_30_percent_of_cn_are_amyloid_positive(baseline):
    config = SynthConfig()
    suvr = 1.02 + config.amyloid_regions.amount * baseline["amyloid_load"]
    positive = (suvr > config.amyloid_cutoff).groupby(baseline["group"]).mean()
    assert positive["CN"] == pytest.approx(0.30, abs=0.05)
    assert positive["CN"] < positive["MCI"] < positive["AD"]


def test_dropout_is_about_9_percent_per_year(latents):
    at_12 = latents[(latents["Month"] == 12) & (latents["group"] != "AD")]
    assert 0.07 <= 1 - at_12["observed"].mean() <= 0.11
    dementia = latents[(latents["Month"] == 12) & (latents["group"] == "AD")]
    assert 1 - dementia["observed"].mean() > 1 - at_12["observed"].mean()


def test_many_mci_subjects_are_followed_36_months(latents):
    mci = latents[(latents["group"] == "MCI") & latents["observed"]]
    followed = mci.groupby("RID")["Month"].max() >= 36
    assert followed.mean() > 0.5


def test_clinician_noise_is_independent_of_the_data(baseline):
    assert abs(np.corrcoef(baseline["eta"], baseline["severity_bl"])[0, 1]) < 0.03
    assert abs(np.corrcoef(baseline["eta"], baseline["MMSE"])[0, 1]) < 0.03


def test_missing_not_at_random_makes_pet_rarer_at_high_severity():
    table = synth.sample_latents(n_subjects=4000, seed=2, missing_not_at_random=True)
    baseline = table[table["Month"] == 0]
    present = baseline.groupby("group")["has_amyloid"].mean()
    assert present["AD"] < present["CN"] - 0.15
    assert baseline["has_amyloid"].mean() == pytest.approx(0.60, abs=0.03)


# --- signal is real but not trivial ---------------------------------------------------------------


def _balanced_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    predicted = cross_val_predict(model, features, labels, cv=folds)
    return balanced_accuracy_score(labels, predicted)


def test_clinical_columns_alone_classify_well_but_not_perfectly(tmp_path):
    root = synth.generate(tmp_path / "tab", n_subjects=1500, seed=4, modalities=("clinical",))
    table = read_adnimerge(root)
    baseline = table[table["VISCODE"] == "bl"]
    columns = ["AGE", "PTEDUCAT", "APOE4", "MMSE", "ADAS13", "CDRSB"]
    baseline = baseline[(baseline[columns] != "").all(axis=1)]
    features = np.column_stack(
        [baseline[columns].astype(float).to_numpy(), baseline["PTGENDER"] == "Female"]
    )
    labels = baseline["DX_bl"].map(GROUP).to_numpy()
    accuracy = _balanced_accuracy(features, labels)
    assert 0.5 < accuracy < 0.9


def _hippocampus_over_brainstem(root) -> pd.DataFrame:
    atlas = np.asarray(nib.load(root / layout.ATLAS_IMAGE).dataobj).astype(int).ravel()
    names = pd.read_csv(root / layout.ATLAS_TABLE, sep="\t").set_index("name")["index"]
    hippocampus = np.isin(atlas, [names["lh-hippocampus"], names["rh-hippocampus"]])
    brainstem = atlas == names["brainstem"]
    table = read_adnimerge(root)
    rows = []
    for row in table[table["VISCODE"] == "bl"].itertuples():
        path = root / layout.image_relpath("t1", row.PTID, "bl")
        if path.exists():
            image = np.asarray(nib.load(path).get_fdata()).ravel()
            ratio = image[hippocampus].mean() / image[brainstem].mean()
            rows.append({"group": GROUP[row.DX_bl], "hippocampus": ratio})
    return pd.DataFrame(rows)


def test_hippocampus_is_about_20_percent_smaller_in_ad_on_t1(t1_cohort):
    """Regional mean intensity (modulated density), normalised by the brainstem (no atrophy)."""
    table = _hippocampus_over_brainstem(t1_cohort)
    means = table.groupby("group")["hippocampus"].mean()
    assert means["AD"] / means["CN"] == pytest.approx(0.8, abs=0.05)
    assert means["AD"] < means["MCI"] < means["CN"]


def test_hippocampus_alone_classifies_above_chance_but_weakly(t1_cohort):
    table = _hippocampus_over_brainstem(t1_cohort)
    accuracy = _balanced_accuracy(table[["hippocampus"]].to_numpy(), table["group"].to_numpy())
    assert 0.4 < accuracy < 0.8


# --- the written dataset ----------------------------------------------------------------------------


def test_layout_and_adnimerge_codings(synth_small):
    for name in (
        layout.ADNIMERGE,
        layout.ATLAS_IMAGE,
        layout.ATLAS_TABLE,
        layout.NOTES,
        layout.TRUTH,
    ):
        assert (synth_small / name).is_file(), name
    for suffix in (".bed", ".bim", ".fam"):
        assert (synth_small / f"{layout.GENOTYPES}{suffix}").is_file()
    table = read_adnimerge(synth_small)
    assert set(table["DX_bl"]) <= set(GROUP) and set(table["DX"]) <= {"CN", "MCI", "Dementia"}
    assert set(table["VISCODE"]) <= {"bl", "m06", "m12", "m18", "m24", "m36", "m48"}
    assert set(table["COLPROT"]) <= {"ADNI1", "ADNI2", "ADNI3"}
    assert table["PTID"].str.fullmatch(r"\d{3}_S_\d{4}").all()
    keys = table[["RID", "Month"]].astype(int)
    assert keys.equals(keys.sort_values(["RID", "Month"]).reset_index(drop=True))
    m18 = table[table["VISCODE"] == "m18"]
    assert set(m18["DX_bl"]) <= {"EMCI", "LMCI"} and set(m18["COLPROT"]) <= {"ADNI1"}
    assert table.groupby("PTID")[["DX_bl", "AGE", "APOE4"]].nunique().max().max() == 1
    assert (table[layout_scores()] == "").to_numpy().any()  # a few blanks, as in ADNI
    mmse = pd.to_numeric(table["MMSE"], errors="coerce").dropna()
    assert mmse.between(0, 30).all()
    dates = pd.to_datetime(table["EXAMDATE"])
    assert (dates.groupby(table["PTID"]).diff().dropna() > pd.Timedelta(days=90)).all()


def layout_scores() -> list[str]:
    return ["MMSE", "CDRSB", "ADAS11", "ADAS13", "RAVLT_immediate", "FAQ"]


def test_images_and_series_match_the_atlas(synth_small):
    atlas = nib.load(synth_small / layout.ATLAS_IMAGE)
    labels = pd.read_csv(synth_small / layout.ATLAS_TABLE, sep="\t")
    assert set(np.unique(np.asarray(atlas.dataobj))) - {0} == set(labels["index"])
    assert len(labels) == 83
    found = {modality: 0 for modality in ("t1", "flair", "amyloid", "tau", "fdg", "fmri")}
    for ptid in read_adnimerge(synth_small)["PTID"].unique()[:15]:
        for modality in found:
            path = synth_small / layout.image_relpath(modality, ptid, "bl")
            if not path.exists():
                continue
            found[modality] += 1
            if modality == "fmri":
                series = pd.read_csv(path, sep="\t")
                assert list(series.columns) == labels["name"].tolist()
                assert series.shape == (140, 83) and np.isfinite(series.to_numpy()).all()
            else:
                image = nib.load(path)
                assert image.shape == atlas.shape
                assert np.allclose(image.affine, atlas.affine)
                data = image.get_fdata()
                assert np.isfinite(data).all() and data.max() > 0
    assert all(found.values()), found


def test_genotypes_read_back_with_apoe_and_planted_snps(synth_small):
    table = read_adnimerge(synth_small)
    with open_bed(synth_small / f"{layout.GENOTYPES}.bed") as bed:
        dosages = bed.read(dtype="float32")
        iid, sid, sex = list(bed.iid), list(bed.sid), bed.sex
        chromosome, allele_1 = bed.chromosome, bed.allele_1
    assert dosages.shape[1] >= 1000
    assert 0.75 <= len(iid) / table["PTID"].nunique() <= 0.95
    assert set(iid) <= set(table["PTID"])
    assert set(sex) <= {1, 2}
    missing = np.isnan(dosages).mean()
    assert 0.005 < missing < 0.02
    e4 = sid.index("rs429358")
    assert chromosome[e4] == "19" and allele_1[e4] == "C"
    apoe = table.drop_duplicates("PTID").set_index("PTID")["APOE4"].astype(int)
    called = ~np.isnan(dosages[:, e4])
    assert np.array_equal(dosages[called, e4], apoe[np.asarray(iid)[called]].to_numpy())
    frequencies = np.nanmean(dosages, axis=0) / 2
    assert (frequencies < 0.05).sum() > 10  # rare SNPs for a MAF filter to drop
    assert np.nanmax(frequencies) < 0.6
    truth = json.loads((synth_small / layout.TRUTH).read_text())
    causal = truth["genetics"]["causal_snps"]
    assert 10 <= len(causal) <= 25
    assert {snp["snp"] for snp in causal} <= set(sid)
    assert "APOE" in {snp["gene"] for snp in causal}
    assert not {snp["gene"] for snp in causal} & set(truth["genetics"]["null_genes"])


def test_snps_of_one_block_are_in_ld(synth_small):
    with open_bed(synth_small / f"{layout.GENOTYPES}.bed") as bed:
        dosages = bed.read(dtype="float32")
    dosages = np.where(np.isnan(dosages), np.nanmean(dosages, axis=0), dosages)
    neighbours = [
        abs(np.corrcoef(dosages[:, k], dosages[:, k + 1])[0, 1])
        for k in range(dosages.shape[1] - 1)
        if dosages[:, k].std() > 0.3 and dosages[:, k + 1].std() > 0.3
    ]
    assert np.median(neighbours) > 0.2


def test_every_pattern_of_t1_flair_amyloid_tau_occurs_3_times(synth_small):
    table = read_adnimerge(synth_small)
    patterns = []
    for ptid in table["PTID"].unique():
        patterns.append(
            tuple(
                (synth_small / layout.image_relpath(m, ptid, "bl")).exists()
                for m in ("t1", "flair", "amyloid", "tau")
            )
        )
    counts = pd.Series(patterns).value_counts()
    assert len(counts) == 16 and counts.min() >= 3


def test_notes_track_severity_and_never_name_the_diagnosis(synth_small):
    notes = pd.read_json(synth_small / layout.NOTES, lines=True)
    table = read_adnimerge(synth_small)
    assert list(notes.columns) == ["PTID", "VISCODE", "text"]
    assert 0.7 < len(notes) / len(table) < 0.95
    for text in notes["text"]:
        assert not synth.BANNED_WORDS.search(text), text
        assert not re.search(r"alzheimer|dementia|\bMCI\b|\bAD\b|\bCN\b|\bSMC\b", text, re.I)
    merged = notes.merge(table[["PTID", "VISCODE", "DX"]], on=["PTID", "VISCODE"])
    assert len(merged) == len(notes)
    severe = merged["text"].str.contains(r"bills|finances|lost|disoriented|dressing", case=False)
    by_dx = severe.groupby(merged["DX"]).mean()
    assert by_dx["Dementia"] > by_dx["MCI"] > by_dx["CN"]
    assert notes["text"].nunique() == len(notes)


def test_truth_lists_the_planted_effects(synth_small):
    truth = json.loads((synth_small / layout.TRUTH).read_text())
    assert truth["seed"] == 0 and truth["n_subjects"] == 120
    assert SynthConfig.model_validate(truth["config"]) == SynthConfig()
    stages = truth["regions"]["atrophy_stages"]
    assert "lh-hippocampus" in stages[0]["regions"]
    assert "lh-superiorfrontal" in stages[-1]["regions"]
    assert "rh-posteriorcingulate" in truth["regions"]["default_mode"]
    assert len(truth["severity"]["thresholds"]) == 4
    subject = truth["subjects"][0]
    assert {"PTID", "severity_bl", "rate", "eta", "G", "APOE4"} <= set(subject)
    assert "source" in truth["calibration_targets"]["mmse"]


# --- behaviour of generate ---------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    first = synth.generate(tmp_path / "a", n_subjects=24, seed=5)
    second = synth.generate(tmp_path / "b", n_subjects=24, seed=5)
    other = synth.generate(tmp_path / "c", n_subjects=24, seed=6)
    digest = tree_digest(first)
    assert any(name.endswith(".nii.gz") for name in digest)
    assert digest == tree_digest(second)
    other_digest = tree_digest(other)
    assert other_digest[layout.ADNIMERGE] != digest[layout.ADNIMERGE]
    assert other_digest[f"{layout.GENOTYPES}.bed"] != digest[f"{layout.GENOTYPES}.bed"]


def test_a_modality_subset_writes_the_same_files(tmp_path):
    full = tree_digest(synth.generate(tmp_path / "full", n_subjects=20, seed=1))
    part = synth.generate(tmp_path / "part", n_subjects=20, seed=1, modalities=["clinical", "t1"])
    written = tree_digest(part)
    assert not (part / layout.NOTES).exists()
    assert not (part / f"{layout.GENOTYPES}.bed").exists()
    assert all(
        name in full and full[name] == digest
        for name, digest in written.items()
        if name != layout.TRUTH
    )
    assert not any("FLAIR" in name or "_pet" in name for name in written)


def test_refuses_a_non_empty_folder_unless_forced(tmp_path):
    out = tmp_path / "cohort"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not empty"):
        synth.generate(out, n_subjects=10, seed=0)
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
    synth.generate(out, n_subjects=10, seed=0, modalities=("clinical",), force=True)
    assert not (out / "precious.txt").exists()
    assert (out / layout.ADNIMERGE).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["cohort"]  # no temporary folders left


def test_an_empty_existing_folder_is_used(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert synth.generate(out, n_subjects=10, seed=0, modalities=("clinical",)) == out
    assert (out / layout.ADNIMERGE).exists()


def test_a_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synth, "_write_notes", broken)
    with pytest.raises(RuntimeError):
        synth.generate(tmp_path / "cohort", n_subjects=10, seed=0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"n_snps_typo": 3}, "n_snps_typo"),
        ({"size": "huge"}, "size"),
        ({"modalities": ("t1", "pet")}, "pet"),
        ({"availability": {"tau": 1.5}}, "availability"),
        ({"dx_noise_sd": -1}, "dx_noise_sd"),
    ],
)
def test_bad_options_are_config_errors(tmp_path, arguments, message):
    with pytest.raises(ConfigError, match=message):
        synth.generate(tmp_path / "x", n_subjects=10, **arguments)
    assert not (tmp_path / "x").exists()


def test_overrides_reach_the_config(tmp_path):
    root = synth.generate(
        tmp_path / "x", n_subjects=30, seed=0, modalities=("clinical", "genotype"), n_snps=400,
        availability={"genotype": 1.0},
    )  # fmt: skip
    truth = json.loads((root / layout.TRUTH).read_text())
    assert truth["config"]["n_snps"] == 400
    assert truth["config"]["availability"]["tau"] == 0.25  # other rates kept
    with open_bed(root / f"{layout.GENOTYPES}.bed") as bed:
        assert bed.sid_count == 400 and bed.iid_count == 30


def test_progress_bar_and_image_visits(tmp_path, capsys):
    root = synth.generate(
        tmp_path / "x", n_subjects=12, seed=0, progress=True, image_visits=("bl", "m12"),
        modalities=("clinical", "t1"),
    )  # fmt: skip
    assert "images" in capsys.readouterr().err
    table = read_adnimerge(root)
    visits = table[table["VISCODE"] == "m12"]
    written = [(root / layout.image_relpath("t1", p, "m12")).exists() for p in visits["PTID"]]
    assert any(written)


@pytest.mark.parametrize("size", ["small", "medium", "paper"])
def test_packaged_atlases_keep_all_labels_in_the_same_space(size):
    from adfuse.data._synth_images import SIZES, load_atlas

    atlas = load_atlas(size)
    assert set(np.unique(atlas.labels)) - {0} == set(range(1, 84))
    assert np.allclose(np.diag(atlas.affine)[:3], SIZES[size])
    centre = atlas.affine @ np.r_[(np.asarray(atlas.shape) - 1) / 2, 1]
    assert np.allclose(centre[:3], [0, -16, 5], atol=2.5)
