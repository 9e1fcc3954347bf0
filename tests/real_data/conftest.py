"""The real public files of ../shared/data (see its README); read as they are, never rewritten."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# ADFUSE_SHARED_DATA overrides the default: the shared folder beside the checkout.
SHARED_DATA = Path(
    os.environ.get("ADFUSE_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "README.md").exists():
        pytest.skip(f"the public test files are not at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture()
def real_dataset(shared_data: Path, tmp_path: Path) -> Path:
    """A dataset folder made only of real files: the CSF table mapped by adfuse.toml, the snpStats
    PLINK set is added by the tests that need it, the Desikan-Killiany atlas, the MNI template cropped to the atlas grid as T1, and the
    FreeSurfer stats."""
    import nibabel as nib
    import numpy as np

    root = tmp_path / "real"
    root.mkdir()
    shutil.copy(shared_data / "clinical" / "ad_data.csv", root / "ad_data.csv")
    (root / "adfuse.toml").write_text(
        """
[files]
adnimerge = "ad_data.csv"

[adnimerge.columns]
PTID = "subject_index"
DX_bl = "Class"
APOE4 = "Genotype"

[adnimerge.values.DX_bl]
Control = "CN"
Impaired = "AD"

[adnimerge.values.APOE4]
E2E2 = 0
E2E3 = 0
E3E3 = 0
E2E4 = 1
E3E4 = 1
E4E4 = 2

[adnimerge.defaults]
VISCODE = "bl"
""",
        encoding="utf-8",
    )
    (root / "atlas").mkdir()
    for name in ("dseg.nii.gz", "dseg.tsv"):
        shutil.copy(shared_data / "atlas" / name, root / "atlas" / name)
    atlas = nib.load(shared_data / "atlas" / "dseg.nii.gz")
    template = nib.load(
        shared_data / "template" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    )
    offset = np.round(np.linalg.solve(template.affine, atlas.affine @ [0, 0, 0, 1])[:3]).astype(int)
    x, y, z = offset
    dx, dy, dz = atlas.shape
    cropped = np.asarray(template.dataobj)[x : x + dx, y : y + dy, z : z + dz]
    anat = root / "rawdata" / "sub-1" / "ses-M000" / "anat"
    anat.mkdir(parents=True)
    nib.Nifti1Image(cropped, atlas.affine).to_filename(anat / "sub-1_ses-M000_T1w.nii.gz")
    stats = root / "derivatives" / "freesurfer" / "sub-2_ses-M000" / "stats"
    shutil.copytree(shared_data / "freesurfer" / "sub-fsm11ni" / "stats", stats)
    return root
