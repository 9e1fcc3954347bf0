"""NIfTI volumes (nibabel) and the region atlas they are registered to.

``load_cohort`` checks headers only (dimensionality, shape and affine against the atlas); voxel
content (NaN/Inf, a truncated file) is checked by ``read_volume`` when a volume is first prepared.
"""

from __future__ import annotations

import gzip
import logging
import threading
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from adfuse.data.tables import read_delimited
from adfuse.errors import DataError

AFFINE_TOLERANCE_MM = 1e-3


@dataclass(frozen=True)
class Atlas:
    """A label volume in the images' space and its index -> region-name table."""

    image: Path
    table: pd.DataFrame  # index (int), name (str), and any further BIDS columns
    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def names(self) -> list[str]:
        return self.table["name"].tolist()

    @property
    def indices(self) -> list[int]:
        return self.table["index"].tolist()

    def labels(self) -> np.ndarray:
        """The label volume as int32 (read on demand)."""
        return np.asarray(_load(self.image).dataobj, dtype=np.int32)


def read_atlas(image: Path, table_path: Path, notices: list[str] | None = None) -> Atlas | None:
    """The atlas pair; None when neither file exists, a DataError when only one does.

    Every label of the map (0, the background, apart) needs a row in the table; rows whose label
    has no voxel (a lookup table shared by several maps) are dropped with a notice, appended to
    ``notices`` when given, else warned."""
    if not image.exists() and not table_path.exists():
        return None
    for path in (image, table_path):
        if not path.exists():
            raise DataError(
                "the atlas needs both dseg.nii.gz and dseg.tsv; this one is missing",
                file=_rel(path),
            )
    table = read_delimited(table_path, "\t", _rel(table_path))
    for column in ("index", "name"):
        if column not in table:
            raise DataError(
                f"required column {column!r} is missing (found: {', '.join(table.columns)})",
                file=_rel(table_path),
                field=column,
            )
    index = pd.to_numeric(table["index"], errors="coerce")
    if index.isna().any():
        bad = table["index"][index.isna()].iloc[0]
        raise DataError(f"index {bad!r} is not an integer", file=_rel(table_path), field="index")
    table["index"] = index.astype("int64")
    if table["index"].duplicated().any() or table["name"].duplicated().any():
        raise DataError("region indices and names must be unique", file=_rel(table_path))
    header = read_header(image, _rel(image))
    if len(header.shape) != 3:
        raise DataError(f"a label volume must be 3D, found shape {header.shape}", file=_rel(image))
    table = _labelled_regions(image, table, _rel(table_path), notices)
    return Atlas(image=image, table=table, shape=header.shape, affine=header.affine)


def _labelled_regions(
    image: Path, table: pd.DataFrame, file: str, notices: list[str] | None
) -> pd.DataFrame:
    """The table rows of the labels the map uses; a label of the map without a row is an error."""
    with _readable(_rel(image)):
        present = np.unique(np.asarray(_load(image, _rel(image)).dataobj, dtype=np.int32))
    if not (present != 0).any():
        raise DataError("the label map has no region (every voxel is 0)", file=_rel(image))
    named = set(table["index"])
    unnamed = [int(i) for i in present if i != 0 and i not in named]
    if unnamed:
        raise DataError(
            f"labels of {image.name} without a row: {_first(unnamed)}; every label of the map "
            "needs a name",
            file=file,
            field="index",
        )
    unused = ~table["index"].isin(present)
    if unused.any():
        message = (
            f"{file}: rows whose label has no voxel in {image.name} are ignored: "
            f"{_first(table['index'][unused].tolist())}"
        )
        if notices is None:
            warnings.warn(message, UserWarning, stacklevel=3)
        else:
            notices.append(message)
    return table[~unused].reset_index(drop=True)


@dataclass(frozen=True)
class Header:
    shape: tuple[int, ...]
    affine: np.ndarray


def read_header(
    path: Path, label: str, subject: str | None = None, field: str | None = None
) -> Header:
    """Shape and affine (sform when set, as BIDS tools write it) without reading voxels.

    A ``.nii``/``.nii.gz`` file is read as its header bytes alone (a cohort scan reads thousands:
    about 5x faster than building nibabel's image); anything else goes through ``nibabel.load``.
    ``subject`` and ``field`` (the modality) are named in the DataError of an unreadable file."""
    if path.name.endswith((".nii", ".nii.gz")):
        header = _nifti_header(path, label, subject, field)
        shape, affine = header.get_data_shape(), header.get_best_affine()
    else:
        image = _load(path, label, subject, field)
        shape, affine = image.shape, image.affine
    shape = tuple(int(n) for n in shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    return Header(shape=shape, affine=np.asarray(affine, dtype=np.float64))


def _nifti_header(path: Path, label: str, subject: str | None, field: str | None):
    """The NIfTI-1 or NIfTI-2 header of a single-file ``.nii``/``.nii.gz`` (nibabel's checks)."""
    import nibabel as nib

    opener = gzip.open if path.name.endswith(".gz") else open
    with _readable(label, subject, field), opener(path, "rb") as handle:
        block = handle.read(540)
        sizes = {int.from_bytes(block[:4], order) for order in ("little", "big")}
        klass = nib.Nifti2Header if 540 in sizes else nib.Nifti1Header
        handle.seek(0)
        return klass.from_fileobj(handle, check=True)


def check_against_atlas(header: Header, atlas: Atlas, label: str, subject: str) -> None:
    """A volume must be 3D, on the atlas grid, in the atlas space."""
    if len(header.shape) != 3:
        raise DataError(
            f"expected a 3D volume, found {len(header.shape)}D shape {header.shape}",
            file=label,
            subject=subject,
            field="shape",
        )
    if header.shape != atlas.shape:
        raise DataError(
            f"shape {header.shape} does not match the atlas {atlas.shape}; register the image to "
            "the atlas space first",
            file=label,
            subject=subject,
            field="shape",
        )
    if not np.allclose(header.affine, atlas.affine, atol=AFFINE_TOLERANCE_MM):
        raise DataError(
            "affine differs from the atlas's: the image is not in the atlas space",
            file=label,
            subject=subject,
            field="affine",
        )


def read_volume(path: Path, label: str, subject: str | None = None) -> np.ndarray:
    """The voxels as float32 [X, Y, Z]; a truncated file or a NaN/Inf voxel is a DataError."""
    image = _load(path, label, subject)
    try:
        with _nibabel_quiet():
            data = np.asarray(image.get_fdata(dtype=np.float32))
    except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(
            f"cannot read the voxels ({exc}); the file is truncated or corrupt",
            file=label,
            subject=subject,
        ) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    total = float(data.sum(dtype=np.float64))
    if not np.isfinite(total):
        bad = np.argwhere(~np.isfinite(data))[0]
        raise DataError(
            f"voxel {tuple(int(i) for i in bad)} is {data[tuple(bad)]}, not a finite number",
            file=label,
            subject=subject,
            field="voxels",
        )
    return data


def _load(
    path: Path, label: str | None = None, subject: str | None = None, field: str | None = None
):
    import nibabel as nib

    with _readable(label or path.name, subject, field):
        return nib.load(path)


@contextmanager
def _readable(label: str, subject: str | None = None, field: str | None = None):
    """A missing or unreadable file as one DataError naming it, with nibabel kept quiet."""
    try:
        with _nibabel_quiet():
            yield
    except FileNotFoundError:
        raise DataError("the file is missing", file=label, subject=subject, field=field) from None
    except Exception as exc:  # nibabel raises many types (ImageFileError, EOFError, zlib.error)
        raise DataError(
            f"not a readable NIfTI file ({type(exc).__name__}: {exc})",
            file=label,
            subject=subject,
            field=field,
        ) from None


_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_saved: dict[logging.Logger, bool] = {}


@contextmanager
def _nibabel_quiet():
    """Silence nibabel's loggers while we read: its header checks log what they find
    ("sizeof_hdr should be 348 ...") on stderr before raising, and our DataError already says it.

    The previous state is restored when the last overlapping read (any thread) ends."""
    global _quiet_depth
    with _quiet_lock:
        if _quiet_depth == 0:
            children = [  # nibabel logs on its children ("nibabel.global"), which may set levels
                logger
                for name, logger in list(logging.Logger.manager.loggerDict.items())
                if name.startswith("nibabel.") and isinstance(logger, logging.Logger)
            ]
            for logger in [logging.getLogger("nibabel"), *children]:
                _quiet_saved[logger] = logger.disabled
                logger.disabled = True
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0:
                for logger, disabled in _quiet_saved.items():
                    logger.disabled = disabled
                _quiet_saved.clear()


def _first(labels: list[int], shown: int = 3) -> str:
    """``40, 41, 42, ... (44 in all)``"""
    text = ", ".join(str(label) for label in labels[:shown])
    return text if len(labels) <= shown else f"{text}, ... ({len(labels)} in all)"


def _rel(path: Path) -> str:
    return "/".join(path.parts[-2:])
