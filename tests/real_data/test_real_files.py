"""Readers on real public files (../shared/data): counts checked against each folder's README."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import adfuse
from adfuse.data.freesurfer import read_session
from adfuse.data.images import read_atlas
from adfuse.data.plink import read_plink
from adfuse.errors import DataError

pytestmark = pytest.mark.real_data


def test_plink_sample_matches_its_readme(shared_data):
    genotypes = read_plink(shared_data / "plink" / "sample")
    dosages = genotypes.read()
    assert dosages.shape == (120, 20)
    values, counts = np.unique(dosages[~np.isnan(dosages)], return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist(), strict=True)) == {
        0.0: 1539,
        1.0: 640,
        2.0: 80,
    }
    assert int(np.isnan(dosages).sum()) == 141
    # numeric allele codes and chromosome 0 are accepted as they are
    assert set(genotypes.bim["allele_1"]) <= {"1", "2", "3", "4"}
    assert set(genotypes.bim["chrom"]) == {"0"}
    # one SNP (the 18th) has 25 % missing calls; call rates range 0.75-1.00
    call_rate = 1 - np.isnan(dosages).mean(axis=0)
    assert call_rate.min() == pytest.approx(0.75, abs=0.01) and call_rate.max() == 1.0
    assert int(np.argmin(call_rate)) == 17


def test_plink_subset_read_is_the_same_as_full_read(shared_data):
    genotypes = read_plink(shared_data / "plink" / "sample")
    full = genotypes.read()
    iids = [genotypes.samples[5], genotypes.samples[0]]
    part = genotypes.read(iids, [genotypes.snps[3]])
    np.testing.assert_array_equal(part[:, 0], full[[5, 0], 3])


def test_desikan_killiany_atlas(shared_data):
    atlas = read_atlas(shared_data / "atlas" / "dseg.nii.gz", shared_data / "atlas" / "dseg.tsv")
    assert atlas.shape == (146, 182, 155)
    assert len(atlas.names) == 83
    labels = atlas.labels()
    assert set(np.unique(labels)) == {0, *atlas.indices}
    # the qform is absent: the sform origin must be used
    np.testing.assert_allclose(atlas.affine[:3, 3], [-73, -107, -72])


def test_freesurfer_stats(shared_data):
    features = read_session(shared_data / "freesurfer" / "sub-fsm11ni" / "stats", "stats")
    assert features["aseg:Left-Hippocampus:Volume_mm3"] == pytest.approx(3343.6)
    assert features["aseg:Right-Hippocampus:Volume_mm3"] == pytest.approx(3529.2)
    assert features["lh.aparc:entorhinal:ThickAvg"] == pytest.approx(2.585)
    assert features["lh.aparc:entorhinal:GrayVol"] == pytest.approx(2055)
    assert features["aseg:eTIV"] == pytest.approx(1565009.153996)


def test_cohort_of_real_files(real_dataset):
    cohort = adfuse.load_cohort(real_dataset)
    assert len(cohort.subjects) == 333
    counts = cohort.baseline["DX_bl"].value_counts().to_dict()
    assert counts == {"CN": 242, "AD": 91}
    # APOE genotype strings mapped to ε4 counts by the adfuse.toml value map
    assert cohort.baseline["APOE4"].value_counts().to_dict() == {0.0: 206, 1.0: 114, 2.0: 13}
    # the CSF proteins are numeric clinical features
    assert "tau" in cohort.spec["clinical"].feature_names
    availability = cohort.availability
    assert availability["t1"].sum() == 1 and availability.loc["1", "t1"]
    assert availability["freesurfer"].sum() == 1 and availability.loc["2", "freesurfer"]
    volume = cohort.read_volume("t1", "1")
    assert volume.shape == (146, 182, 155) and volume.max() > 100
    assert cohort.spec["freesurfer"].shape == (170,)


def test_template_off_the_atlas_grid_is_refused(real_dataset, shared_data):
    anat = real_dataset / "rawdata" / "sub-3" / "ses-M000" / "anat"
    anat.mkdir(parents=True)
    shutil.copy(
        shared_data / "template" / "mni152_t1_2mm.nii.gz", anat / "sub-3_ses-M000_T1w.nii.gz"
    )
    with pytest.raises(
        DataError, match=r"sub-3_ses-M000_T1w.nii.gz: subject 3: shape: shape \(99, 117, 95\)"
    ):
        adfuse.load_cohort(real_dataset)


def _copy_plink(shared_data, root):
    for ext in ("bed", "bim", "fam"):
        shutil.copy(shared_data / "plink" / f"sample.{ext}", root / f"genotypes.{ext}")


def test_genotypes_of_nobody_in_the_table_are_refused(real_dataset, shared_data):
    _copy_plink(shared_data, real_dataset)
    with pytest.raises(DataError, match=r"genotypes.fam: IID: none of the 120 sample IIDs"):
        adfuse.load_cohort(real_dataset)


def test_real_genotypes_join_the_cohort_by_iid(shared_data, tmp_path):
    """An ADNIMERGE table for 100 of the 120 genotyped people: 20 extra samples only warn."""
    _copy_plink(shared_data, tmp_path)
    fam = (shared_data / "plink" / "sample.fam").read_text().split("\n")
    rows = [line.split() for line in fam if line.strip()]
    lines = ["PTID,VISCODE,DX_bl,PTGENDER"]
    for _fid, iid, _, _, sex, pheno in rows[:100]:
        dx = "AD" if pheno == "2" else "CN"
        lines.append(f"{iid},bl,{dx},{'Male' if sex == '1' else 'Female'}")
    (tmp_path / "ADNIMERGE.csv").write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match="20 genotyped samples match no subject"):
        cohort = adfuse.load_cohort(tmp_path)
    assert cohort.availability["genotype"].all()
    assert cohort.spec["genotype"].shape == (20,)
    first = rows[0][1]
    full = read_plink(shared_data / "plink" / "sample").read()
    np.testing.assert_array_equal(cohort.read_genotypes([first])[0], full[0])
