"""``load_cohort(path) -> Cohort``: every reader at once, cross-checked, nothing loaded eagerly.

A Cohort knows its subjects and visits (the ADNIMERGE table), which file each visit has for each
modality, the genotype set, the notes, the atlas, and the per-modality ``spec``. Tables and file
headers are validated here; volumes and time series are read on demand (``read_volume``,
``read_timeseries``), when their voxel content is checked.
"""

from __future__ import annotations

import copy
import hashlib
import re
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from adfuse.config import DatasetConfig, load_dataset_config
from adfuse.data import freesurfer as fs
from adfuse.data import images, layout, timeseries
from adfuse.data.adnimerge import clinical_features, read_adnimerge
from adfuse.data.plink import Genotypes, read_plink
from adfuse.data.text import read_notes
from adfuse.errors import DataError


class DatasetWarning(UserWarning):
    """Something was ignored that a user may want to know of (files matching no subject...)."""


@dataclass(frozen=True)
class ModalitySpec:
    """What one modality looks like: kind, per-sample shape, feature names."""

    name: str
    kind: str  # tabular | genotype | volume | timeseries | text
    shape: tuple[int, ...]
    feature_names: tuple[str, ...] = ()
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)  # genotype: gene -> SNPs

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "shape": list(self.shape),
            "feature_names": list(self.feature_names),
            "categories": {k: list(v) for k, v in self.categories.items()},
            "groups": {k: list(v) for k, v in self.groups.items()},
        }

    @classmethod
    def from_dict(cls, data: dict) -> ModalitySpec:
        return cls(
            name=data["name"],
            kind=data["kind"],
            shape=tuple(data["shape"]),
            feature_names=tuple(data["feature_names"]),
            categories={k: tuple(v) for k, v in data.get("categories", {}).items()},
            groups={k: tuple(v) for k, v in data.get("groups", {}).items()},
        )


@dataclass
class Cohort:
    """Subjects, visits, labels and which modality each visit has."""

    root: Path
    table: pd.DataFrame  # validated ADNIMERGE rows (see adfuse.data.adnimerge)
    files: pd.DataFrame  # index (PTID, VISCODE); a column per file modality; paths relative to root
    genotypes: Genotypes | None
    notes: pd.DataFrame | None
    atlas: images.Atlas | None
    freesurfer: pd.DataFrame | None  # index (PTID, VISCODE); one column per feature
    clinical_numeric: list[str]
    clinical_categorical: list[str]
    fmri_regions: list[str]
    config: DatasetConfig
    warnings: list[str] = field(default_factory=list)

    # ----------------------------------------------------------------- subjects and visits
    @cached_property
    def subjects(self) -> list[str]:
        return sorted(self.table["PTID"].unique().tolist())

    @property
    def visits(self) -> pd.DataFrame:
        return self.table[["PTID", "VISCODE", "MONTH", "EXAMDATE", "DX"]]

    @cached_property
    def baseline(self) -> pd.DataFrame:
        """One row per subject, indexed by PTID: the ``bl`` visit, else the earliest one."""
        ordered = self.table.assign(_bl=self.table["VISCODE"] != "bl").sort_values(
            ["PTID", "_bl", "MONTH"], na_position="last"
        )
        return ordered.drop_duplicates("PTID").drop(columns="_bl").set_index("PTID").sort_index()

    # ----------------------------------------------------------------- modalities
    @cached_property
    def visit_availability(self) -> pd.DataFrame:
        """Bool per subject-visit (index PTID, VISCODE) and modality the cohort has."""
        index = pd.MultiIndex.from_frame(self.table[["PTID", "VISCODE"]])
        out = pd.DataFrame(index=index)
        out["clinical"] = True
        if self.genotypes is not None:
            out["genotype"] = index.get_level_values("PTID").isin(self.genotypes.samples)
        for modality in self.files.columns:
            present = self.files[modality].dropna().index
            out[modality] = index.isin(present)
        if self.notes is not None:
            out["notes"] = index.isin(pd.MultiIndex.from_frame(self.notes[["PTID", "VISCODE"]]))
        if self.freesurfer is not None:
            out["freesurfer"] = index.isin(self.freesurfer.index)
        return out[[m for m in layout.MODALITIES if m in out and out[m].any()]]

    @cached_property
    def availability(self) -> pd.DataFrame:
        """Bool per subject (index PTID, at the baseline visit) and modality."""
        keys = list(zip(self.baseline.index, self.baseline["VISCODE"], strict=True))
        out = self.visit_availability.loc[keys]
        out.index = self.baseline.index
        return out

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities present for at least one subject-visit."""
        return tuple(self.visit_availability.columns)

    @cached_property
    def spec(self) -> dict[str, ModalitySpec]:
        out: dict[str, ModalitySpec] = {}
        for modality in self.modalities:
            kind = layout.KINDS[modality]
            if modality == "clinical":
                categories = {
                    c: tuple(sorted(self.table[c].dropna().unique()))
                    for c in self.clinical_categorical
                }
                names = tuple(self.clinical_numeric + self.clinical_categorical)
                out[modality] = ModalitySpec(modality, kind, (len(names),), names, categories)
            elif modality == "genotype":
                snps = tuple(self.genotypes.snps)
                groups = dict(self.genotypes.genes or {})
                out[modality] = ModalitySpec(modality, kind, (len(snps),), snps, groups=groups)
            elif kind == "volume":
                shape, names = self._volume_grid(modality)
                out[modality] = ModalitySpec(modality, kind, shape, names)
            elif modality == "fmri":
                first = self.root / self.files["fmri"].dropna().iloc[0]
                n_time = sum(1 for line in open(first, encoding="utf-8-sig") if line.strip()) - 1
                names = tuple(self.fmri_regions)
                out[modality] = ModalitySpec(modality, kind, (n_time, len(names)), names)
            elif modality == "notes":
                out[modality] = ModalitySpec(modality, kind, ())
            elif modality == "freesurfer":
                names = tuple(self.freesurfer.columns)
                out[modality] = ModalitySpec(modality, kind, (len(names),), names)
        return out

    def _volume_grid(self, modality: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
        if self.atlas is not None:
            return self.atlas.shape, tuple(self.atlas.names)
        first = self.files[modality].dropna().iloc[0]
        return images.read_header(self.root / first, first).shape, ()

    # ----------------------------------------------------------------- reading data
    def path(self, modality: str, ptid: str, viscode: str = "bl") -> Path | None:
        """The file of an image/time-series modality at one visit, None when absent."""
        if modality not in self.files.columns or (ptid, viscode) not in self.files.index:
            return None
        relative = self.files.at[(ptid, viscode), modality]
        return None if pd.isna(relative) else self.root / relative

    def read_volume(self, modality: str, ptid: str, viscode: str = "bl") -> np.ndarray:
        path = self._require(modality, ptid, viscode)
        return images.read_volume(path, self._relative(path), ptid)

    def read_timeseries(self, ptid: str, viscode: str = "bl") -> np.ndarray:
        path = self._require("fmri", ptid, viscode)
        return timeseries.read_timeseries(path, self._relative(path), ptid)

    def read_genotypes(self, ptids: list[str], snps: list[str] | None = None) -> np.ndarray:
        if self.genotypes is None:
            raise DataError("this dataset has no genotypes", file=f"{layout.GENOTYPES}.bed")
        return self.genotypes.read(ptids, snps)

    def note(self, ptid: str, viscode: str = "bl") -> str | None:
        if self.notes is None:
            return None
        rows = self.notes[(self.notes["PTID"] == ptid) & (self.notes["VISCODE"] == viscode)]
        return None if rows.empty else str(rows["text"].iloc[0])

    def clinical_values(self, ptids: list[str], viscode: str | None = None) -> pd.DataFrame:
        """Clinical feature columns for these subjects at baseline (or at ``viscode``)."""
        if viscode is None:
            rows = self.baseline.loc[ptids]
        else:
            rows = self.table.set_index(["PTID", "VISCODE"]).loc[[(p, viscode) for p in ptids]]
            rows.index = ptids
        return rows[self.clinical_numeric + self.clinical_categorical]

    def _require(self, modality: str, ptid: str, viscode: str) -> Path:
        path = self.path(modality, ptid, viscode)
        if path is None:
            raise DataError(
                f"no {modality} file at VISCODE {viscode!r}", subject=ptid, field=modality
            )
        return path

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    # ----------------------------------------------------------------- provenance
    def fingerprint(self) -> dict:
        """What identifies this dataset: files, sizes, table hash, modality counts.

        Computed once per ``Cohort`` (a snapshot of the folder as loaded); a run asks for it
        several times (run.json, each prepared cache's key)."""
        return copy.deepcopy(self._fingerprint)

    @cached_property
    def _fingerprint(self) -> dict:
        listing = []
        for path in sorted(p for p in self.root.rglob("*") if p.is_file()):
            relative = path.relative_to(self.root).as_posix()
            if relative.startswith(".") or relative == layout.TRUTH:
                continue
            listing.append(f"{relative}\t{path.stat().st_size}")
        table_path = self.config.path(self.root, "adnimerge")
        counts = {m: int(v) for m, v in self.availability.sum().items()}
        digest = hashlib.sha256("\n".join(listing).encode()).hexdigest()
        return {
            "n_subjects": len(self.subjects),
            "n_visits": len(self.table),
            "files_sha256": digest,
            "n_files": len(listing),
            "adnimerge_sha256": hashlib.sha256(table_path.read_bytes()).hexdigest(),
            "modality_counts": counts,
        }

    def summary(self) -> str:
        counts = ", ".join(f"{m} {n}" for m, n in self.availability.sum().items())
        return f"Cohort({len(self.subjects)} subjects, {len(self.table)} visits; {counts})"

    __repr__ = summary


def load_cohort(path: str | Path) -> Cohort:
    """Read a dataset folder (DESIGN.md layout, or mapped by its ``adfuse.toml``)."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(
            "not a dataset folder (it does not exist or is not a directory)", file=str(root)
        )
    config = load_dataset_config(root)
    notices: list[str] = []
    table = read_adnimerge(config.path(root, "adnimerge"), config.adnimerge)
    subjects = set(table["PTID"])
    visit_keys = set(zip(table["PTID"], table["VISCODE"], strict=True))

    genotypes = read_plink(config.path(root, "genotypes"))
    if genotypes is not None:
        extra = [iid for iid in genotypes.samples if iid not in subjects]
        if len(extra) == len(genotypes.samples):
            raise DataError(
                f"none of the {len(extra)} sample IIDs (e.g. {extra[0]!r}) is a PTID of "
                f"{layout.ADNIMERGE}: IID must be the PTID",
                file=genotypes.bed.with_suffix(".fam").name,
                field="IID",
            )
        if extra:
            notices.append(f"{len(extra)} genotyped samples match no subject and are ignored")

    atlas = images.read_atlas(
        config.path(root, "atlas_image"), config.path(root, "atlas_table"), notices
    )
    files, fmri_regions, file_notices = _scan_rawdata(root, config, table, visit_keys, atlas)
    notices += file_notices

    notes = read_notes(config.path(root, "notes"))
    if notes is not None:
        known = [key in visit_keys for key in zip(notes["PTID"], notes["VISCODE"], strict=True)]
        if not all(known):
            notices.append(
                f"{len(known) - sum(known)} notes match no subject-visit and are ignored"
            )
            notes = notes[known].reset_index(drop=True)

    freesurfer = _scan_freesurfer(config.path(root, "freesurfer"), table, visit_keys, notices)
    include, exclude = config.clinical.features, config.clinical.exclude
    numeric, categorical = clinical_features(table, include, exclude)
    for notice in notices:
        warnings.warn(f"{root.name}: {notice}", DatasetWarning, stacklevel=2)
    return Cohort(
        root=root,
        table=table,
        files=files,
        genotypes=genotypes,
        notes=notes,
        atlas=atlas,
        freesurfer=freesurfer,
        clinical_numeric=numeric,
        clinical_categorical=categorical,
        fmri_regions=fmri_regions,
        config=config,
        warnings=notices,
    )


def _scan_rawdata(root, config, table, visit_keys, atlas):
    """Find each visit's files under rawdata/ and check their headers."""
    patterns = {m: (folder, re.compile(rx)) for m, (folder, rx) in layout.IMAGE_PATTERNS.items()}
    columns = list(patterns)
    empty = pd.DataFrame(
        columns=columns, index=pd.MultiIndex.from_tuples([], names=["PTID", "VISCODE"])
    )
    rawdata = config.path(root, "rawdata")
    if not rawdata.is_dir():
        return empty, [], []
    by_bids = {layout.bids_subject(p): p for p in table["PTID"].unique()}
    viscode_of = {}
    for ptid, viscode in visit_keys:
        session = layout.session_label(viscode)
        if session is not None:
            viscode_of[(ptid, session)] = viscode
    rows: dict[tuple[str, str], dict[str, str]] = {}
    unmatched_sessions, repeated = 0, 0
    grids: dict[str, tuple] = {}
    fmri_regions: list[str] | None = None
    subject_dirs = sorted(rawdata.glob("sub-*"))
    unmatched = [d.name for d in subject_dirs if d.name.removeprefix("sub-") not in by_bids]
    if subject_dirs and len(unmatched) == len(subject_dirs):
        bids, ptid = next(iter(by_bids.items()))
        raise DataError(
            f"none of the {len(unmatched)} subject folders (e.g. {unmatched[0]!r}) matches a PTID "
            f"of {layout.ADNIMERGE}: Clinica's naming is sub-<PTID without punctuation>, with "
            f"ADNI in front of an ADNI PTID (here: {ptid} -> sub-{bids})",
            file=f"{rawdata.name}/",
        )
    for subject_dir in subject_dirs:
        ptid = by_bids.get(subject_dir.name.removeprefix("sub-"))
        if ptid is None:
            continue
        for session_dir in sorted(subject_dir.glob("ses-*")):
            viscode = viscode_of.get((ptid, session_dir.name))
            if viscode is None:
                unmatched_sessions += 1
                continue
            for modality, (folder, pattern) in patterns.items():
                found = sorted(
                    p for p in (session_dir / folder).glob("*") if pattern.search(p.name)
                )
                if not found:
                    continue
                repeated += len(found) - 1
                path = found[0]
                relative = path.relative_to(root).as_posix()
                if modality == "fmri":
                    regions = timeseries.read_header(path, relative)
                    if fmri_regions is None:
                        fmri_regions = regions
                    elif regions != fmri_regions:
                        raise DataError(
                            f"{len(regions)} regions in the header differ from the first "
                            f"time-series file's {len(fmri_regions)}",
                            file=relative,
                            subject=ptid,
                            field="header",
                        )
                else:
                    header = images.read_header(path, relative, ptid, modality)
                    if atlas is not None:
                        images.check_against_atlas(header, atlas, relative, ptid)
                    else:
                        _check_same_grid(grids, modality, header, relative, ptid)
                rows.setdefault((ptid, viscode), {})[modality] = relative
    notices = []
    if unmatched:
        notices.append(f"{len(unmatched)} rawdata subject folders match no PTID and are ignored")
    if unmatched_sessions:
        notices.append(f"{unmatched_sessions} session folders match no visit and are ignored")
    if repeated:
        notices.append(f"{repeated} repeated scans in a session ignored (the first name is used)")
    if not rows:
        return empty, [], notices
    files = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=columns)
    files.index = pd.MultiIndex.from_tuples(files.index, names=["PTID", "VISCODE"])
    files = files.dropna(axis=1, how="all")
    return files, fmri_regions or [], notices


def _check_same_grid(grids, modality, header, relative, ptid) -> None:
    if modality not in grids:
        grids[modality] = header.shape
    elif grids[modality] != header.shape or len(header.shape) != 3:
        raise DataError(
            f"shape {header.shape} differs from other {modality} volumes {grids[modality]} "
            "(and there is no atlas to register them to)",
            file=relative,
            subject=ptid,
            field="shape",
        )


def _scan_freesurfer(folder: Path, table, visit_keys, notices) -> pd.DataFrame | None:
    if not folder.is_dir():
        return None
    by_bids = {layout.bids_subject(p): p for p in table["PTID"].unique()}
    sessions = {}
    for ptid, viscode in visit_keys:
        session = layout.session_label(viscode)
        if session:
            sessions[(ptid, session)] = viscode
    rows = {}
    for stats in sorted(folder.glob("sub-*_ses-*/stats")):
        bids, _, session = stats.parent.name.partition("_")
        ptid = by_bids.get(bids.removeprefix("sub-"))
        viscode = sessions.get((ptid, session)) if ptid else None
        if viscode is None:
            notices.append(f"FreeSurfer folder {stats.parent.name} matches no subject-visit")
            continue
        label = stats.relative_to(folder.parent.parent).as_posix()
        rows[(ptid, viscode)] = fs.read_session(stats, label)
    if not rows:
        return None
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index = pd.MultiIndex.from_tuples(frame.index, names=["PTID", "VISCODE"])
    return frame
