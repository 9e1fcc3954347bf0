"""A tiny, hand-made dataset in the DESIGN.md layout (4 subjects), written without the generator,
so reader tests know every value and can break one thing at a time."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SUBJECTS = ["011_S_0002", "011_S_0003", "022_S_0004", "022_S_0005"]
SHAPE = (8, 9, 10)
AFFINE = np.diag([3.0, 3.0, 3.0, 1.0])
REGIONS = ["lh-hippocampus", "rh-hippocampus", "precuneus"]

ADNIMERGE = """RID,PTID,VISCODE,EXAMDATE,DX_bl,DX,AGE,PTGENDER,PTEDUCAT,APOE4,MMSE,CDRSB,ADAS13,ABETA,Month
2,011_S_0002,bl,2005-09-08,CN,CN,74.3,Male,16,0,28,0,10.67,>1700,0
2,011_S_0002,m06,2006-03-06,CN,CN,74.3,Male,16,0,29,0.5,,,6
3,011_S_0003,bl,2005-09-12,AD,Dementia,81.3,Male,18,1,20,4.5,31,741.5,0
3,011_S_0003,m24,2007-09-12,AD,Dementia,81.3,Male,18,1,16,8,40.33,,24
4,022_S_0004,bl,2005-11-08,LMCI,MCI,67.5,Female,10,0,27,1,21.33,<200,0
5,022_S_0005,bl,2005-11-10,EMCI,MCI,73.7,Female,16,2,,1.5,14,,0
"""


def write_tiny_dataset(root: Path) -> Path:
    """Write the dataset into ``root`` and return it."""
    import nibabel as nib
    from bed_reader import to_bed

    root.mkdir(parents=True, exist_ok=True)
    (root / "ADNIMERGE.csv").write_text(ADNIMERGE, encoding="utf-8")

    genotyped = SUBJECTS[:3]
    dosages = np.array([[0, 1, 2, 0], [1, 1, np.nan, 2], [2, 0, 0, 1]], dtype=np.float32)
    to_bed(
        root / "genotypes.bed",
        dosages,
        properties={
            "fid": genotyped,
            "iid": genotyped,
            "sid": ["rs429358", "rs7412", "rs744373", "rs11136000"],
            "chromosome": ["19", "19", "2", "8"],
            "bp_position": [44908684, 44908822, 127137039, 27607002],
            "allele_1": ["C", "T", "G", "T"],
            "allele_2": ["T", "C", "A", "C"],
        },
    )

    (root / "genotypes.genes.tsv").write_text(
        "snp\tgene\nrs429358\tAPOE\nrs7412\tAPOE\nrs744373\tBIN1\nrs11136000\tCLU\n",
        encoding="utf-8",
    )

    (root / "atlas").mkdir(exist_ok=True)
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[1:4, 1:4, 1:4] = 1
    labels[4:7, 1:4, 1:4] = 2
    labels[2:6, 5:8, 5:9] = 3
    nib.Nifti1Image(labels, AFFINE).to_filename(root / "atlas" / "dseg.nii.gz")
    rows = ["index\tname"] + [f"{i}\t{name}" for i, name in enumerate(REGIONS, start=1)]
    (root / "atlas" / "dseg.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")

    rng = np.random.default_rng(0)
    for number, ptid in enumerate(SUBJECTS):
        bids = "ADNI" + ptid.replace("_", "")
        session = root / "rawdata" / f"sub-{bids}" / "ses-M000"
        stem = f"sub-{bids}_ses-M000"
        (session / "anat").mkdir(parents=True)
        volume = (rng.random(SHAPE) * 100 + 50 * (labels > 0)).astype(np.float32)
        nib.Nifti1Image(volume, AFFINE).to_filename(session / "anat" / f"{stem}_T1w.nii.gz")
        if number % 2 == 0:
            (session / "pet").mkdir()
            nib.Nifti1Image(volume * 0.01, AFFINE).to_filename(
                session / "pet" / f"{stem}_trc-18FAV45_pet.nii.gz"
            )
        if number < 2:
            (session / "func").mkdir()
            series = rng.standard_normal((20, len(REGIONS)))
            lines = ["\t".join(REGIONS)] + ["\t".join(f"{v:.5f}" for v in row) for row in series]
            (session / "func" / f"{stem}_task-rest_timeseries.tsv").write_text(
                "\n".join(lines) + "\n"
            )

    notes = [
        {
            "PTID": "011_S_0002",
            "VISCODE": "bl",
            "text": "No complaints; independent in daily life.",
        },
        {"PTID": "011_S_0003", "VISCODE": "bl", "text": "Wife reports he gets lost driving."},
        {"PTID": "011_S_0003", "VISCODE": "m24", "text": "Needs help with finances."},
    ]
    (root / "notes.jsonl").write_text(
        "".join(json.dumps(n) + "\n" for n in notes), encoding="utf-8"
    )
    return root
