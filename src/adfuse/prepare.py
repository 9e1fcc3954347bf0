"""Per-modality preprocessing, an on-disk cache, and the torch Dataset of ``Batch`` items.

Two kinds of transform, kept apart so that nothing leaks across splits:

- **per-subject** transforms (a volume's intensity z-score inside the brain, resampling to the model
  grid, a mid-sagittal slice, ROI crops, an fMRI series z-scored per region, note tokenisation)
  depend on one subject only. Their outputs are cached on disk as memory-mapped arrays keyed by a
  hash of (dataset fingerprint, modality, view, transform config), shared by every task and split.
- **fitted** statistics (clinical/FreeSurfer scalers and imputation values, SNP imputation) are
  fitted on the training split only, by ``Preprocessor.fit``, which records the subject ids it saw
  (``fitted_on``) so ``splits.check_disjoint`` can prove they are a subset of train.

``collate`` builds a ``Batch``: ``inputs[modality]`` (zeros where absent),
``present[modality]`` (BoolTensor[B]), ``target``, ``ids``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from pydantic import Field
from torch.nn import functional as nn_functional

from adfuse.config import LocalPath, StrictModel
from adfuse.data import layout
from adfuse.errors import ConfigError, DataError
from adfuse.io import waiting_lock

if TYPE_CHECKING:
    from adfuse.data.cohort import Cohort, ModalitySpec
    from adfuse.splits import Split
    from adfuse.tasks import Task

CACHE_VERSION = 1
View = Literal["volume", "slice", "roi", "regions", "series", "connectivity", "vector", "tokens"]
DEFAULT_VIEWS: dict[str, str] = {
    "tabular": "vector",
    "genotype": "vector",
    "volume": "volume",
    "timeseries": "series",
    "text": "tokens",
}
VIEWS_OF_KIND: dict[str, tuple[str, ...]] = {
    "tabular": ("vector",),
    "genotype": ("vector",),
    "volume": ("volume", "slice", "roi", "regions"),
    "timeseries": ("series", "connectivity"),
    "text": ("tokens",),
}


class PrepareConfig(StrictModel):
    """How each modality is turned into a tensor (part of every cache key and run.json)."""

    volume_shape: tuple[int, int, int] = (32, 32, 32)
    slice_shape: tuple[int, int] = (64, 64)
    slice_axis: Literal["sagittal", "coronal", "axial"] = "sagittal"
    roi_size: int = Field(12, ge=2, le=128)
    fmri_length: int = Field(140, ge=2)
    text_max_tokens: int = Field(96, ge=8, le=4096)
    text_model: LocalPath | None = None  # local Hugging Face path; None = the bundled MiniLM
    views: dict[str, View] = Field(default_factory=dict)

    def view(self, modality: str, kind: str) -> str:
        view = self.views.get(modality, DEFAULT_VIEWS[kind])
        if view not in VIEWS_OF_KIND[kind]:
            raise ConfigError(
                f"view '{view}' does not apply to {modality} ({kind}); "
                f"choose from {', '.join(VIEWS_OF_KIND[kind])}"
            )
        return view


def input_shape(spec: ModalitySpec, view: str | None, config: PrepareConfig) -> tuple[int, ...]:
    """The per-sample tensor shape a modality has after preparation in a view."""
    view = config.view(spec.name, spec.kind) if view is None else view
    if spec.kind in ("tabular", "genotype"):
        # clinical: numeric columns + one-hot categories (the categories are in the spec)
        extra = sum(len(v) - 1 for v in spec.categories.values())
        return (spec.shape[0] + extra,)
    if spec.kind == "volume":
        n_regions = len(spec.feature_names)
        return {
            "volume": tuple(config.volume_shape),
            "slice": tuple(config.slice_shape),
            "roi": (n_regions, *(config.roi_size,) * 3),
            "regions": (n_regions,),
        }[view]
    if spec.kind == "timeseries":
        n_regions = spec.shape[1]
        return (n_regions, n_regions) if view == "connectivity" else (config.fmri_length, n_regions)
    if spec.kind == "text":
        return (config.text_max_tokens,)
    raise ConfigError(f"no input shape for {spec.name} ({spec.kind})")


# ----------------------------------------------------------------------------- Batch
@dataclass
class Batch:
    """Inputs of present modalities (zeros where absent), masks, targets and subject ids."""

    inputs: dict[str, torch.Tensor]
    present: dict[str, torch.Tensor]
    target: torch.Tensor
    ids: list[str]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    # (dataset, item indices) when collated from one CohortDataset: lets a model whose views
    # differ from the dataset's (slices, ROI crops) re-prepare the same subjects its own way
    source: tuple[CohortDataset, list[int]] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            inputs={m: x.to(device) for m, x in self.inputs.items()},
            present={m: p.to(device) for m, p in self.present.items()},
            target=self.target.to(device),
            ids=list(self.ids),
            extras={k: v.to(device) for k, v in self.extras.items()},
            source=self.source,
        )

    def without(self, modalities: set[str] | list[str]) -> Batch:
        """The same batch with these modalities withheld (absent, zeroed) for every sample."""
        inputs, present = dict(self.inputs), dict(self.present)
        for modality in modalities:
            if modality in inputs:
                inputs[modality] = torch.zeros_like(inputs[modality])
                present[modality] = torch.zeros_like(present[modality])
        return Batch(inputs, present, self.target, list(self.ids), dict(self.extras), self.source)

    @staticmethod
    def cat(batches: list[Batch]) -> Batch:
        """One batch of these batches' samples, in order (``source`` kept when they share it)."""
        if len(batches) == 1:
            return batches[0]
        first = batches[0]
        sources = [b.source for b in batches]
        source = None
        if all(s is not None and s[0] is sources[0][0] for s in sources):
            source = (sources[0][0], [i for s in sources for i in s[1]])
        shared_extras = [k for k in first.extras if all(k in b.extras for b in batches)]
        return Batch(
            inputs={m: torch.cat([b.inputs[m] for b in batches]) for m in first.inputs},
            present={m: torch.cat([b.present[m] for b in batches]) for m in first.present},
            target=torch.cat([b.target for b in batches]),
            ids=[i for b in batches for i in b.ids],
            extras={k: torch.cat([b.extras[k] for b in batches]) for k in shared_extras},
            source=source,
        )

    def select(self, index: torch.Tensor | list[int]) -> Batch:
        index = torch.as_tensor(index, dtype=torch.long)
        return Batch(
            inputs={m: x[index] for m, x in self.inputs.items()},
            present={m: p[index] for m, p in self.present.items()},
            target=self.target[index],
            ids=[self.ids[i] for i in index.tolist()],
            extras={k: v[index] for k, v in self.extras.items()},
            source=None
            if self.source is None
            else (self.source[0], [self.source[1][i] for i in index.tolist()]),
        )


class Item(dict):
    """One dataset item: ``{"id", "inputs", "present", "target", "source"}``, also readable as
    attributes (``item.inputs``, ``item.present``, ``item.target``, ``item.id``, ``item.ids``)."""

    __slots__ = ()

    def __getattr__(self, name: str):
        if name == "ids":
            return [self["id"]]
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def collate(items: list[dict] | list[Batch]) -> Batch:
    """Stack dataset items into a Batch (items already hold zeros where absent); a list of
    Batches is concatenated."""
    if items and isinstance(items[0], Batch):
        return Batch.cat(list(items))
    modalities = list(items[0]["inputs"])
    return Batch(
        inputs={m: torch.stack([item["inputs"][m] for item in items]) for m in modalities},
        present={
            m: torch.tensor([item["present"][m] for item in items], dtype=torch.bool)
            for m in modalities
        },
        target=torch.stack([item["target"] for item in items]),
        ids=[item["id"] for item in items],
        source=_common_source(items),
    )


def _common_source(items: list[dict]) -> tuple[CohortDataset, list[int]] | None:
    sources = [item.get("source") for item in items]
    if any(s is None for s in sources) or any(s[0] is not sources[0][0] for s in sources):
        return None
    return sources[0][0], [index for _, index in sources]


# ----------------------------------------------------------------------------- fitted statistics
@dataclass
class TabularScaler:
    """Standardise numeric columns and impute missing values with the training mean (-> 0);
    one-hot categorical columns (an unseen or missing category is all zeros)."""

    numeric: list[str]
    categories: dict[str, list[str]]
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None
    fitted_on: list[str] = field(default_factory=list)

    @property
    def width(self) -> int:
        return len(self.numeric) + sum(len(c) for c in self.categories.values())

    @property
    def output_names(self) -> list[str]:
        names = list(self.numeric)
        for column, values in self.categories.items():
            names += [f"{column}={value}" for value in values]
        return names

    def fit(self, numeric_values: np.ndarray, ids: list[str]) -> TabularScaler:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: mean 0, scale 1
            mean = np.nanmean(numeric_values, axis=0) if len(numeric_values) else None
            scale = np.nanstd(numeric_values, axis=0) if len(numeric_values) else None
        width = numeric_values.shape[1]
        mean = np.zeros(width) if mean is None else np.nan_to_num(mean, nan=0.0)
        scale = np.ones(width) if scale is None else np.nan_to_num(scale, nan=1.0)
        self.mean, self.scale = mean, np.where(scale > 1e-8, scale, 1.0)
        self.fitted_on = sorted(ids)
        return self

    def transform(self, numeric_values: np.ndarray, categorical_values: list[list]) -> np.ndarray:
        z = (numeric_values - self.mean) / self.scale
        z = np.where(np.isnan(z), 0.0, z)
        parts = [z]
        for position, (_column, values) in enumerate(self.categories.items()):
            onehot = np.zeros((len(z), len(values)))
            for row, value in enumerate(categorical_values):
                if value[position] in values:
                    onehot[row, values.index(value[position])] = 1.0
            parts.append(onehot)
        return np.concatenate(parts, axis=1).astype(np.float32)

    def state(self) -> dict:
        return {
            "numeric": self.numeric,
            "categories": self.categories,
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_state(cls, state: dict) -> TabularScaler:
        return cls(
            numeric=state["numeric"],
            categories=state["categories"],
            mean=np.asarray(state["mean"], dtype=np.float64),
            scale=np.asarray(state["scale"], dtype=np.float64),
            fitted_on=state["fitted_on"],
        )


@dataclass
class Preprocessor:
    """The fitted statistics of one run, per tabular/genotype modality."""

    scalers: dict[str, TabularScaler] = field(default_factory=dict)

    @classmethod
    def fit(cls, cohort: Cohort, modalities: list[str], ids: list[str]) -> Preprocessor:
        scalers = {}
        for modality in modalities:
            kind = layout.KINDS[modality]
            if kind not in ("tabular", "genotype"):
                continue
            have = [i for i in ids if cohort.availability.at[i, modality]]
            numeric_names, categories = _tabular_columns(cohort, modality)
            scaler = TabularScaler(numeric_names, categories)
            scalers[modality] = scaler.fit(_numeric_matrix(cohort, modality, have), have)
        return cls(scalers)

    def fitted_on(self) -> dict[str, list[str]]:
        """Statistic name -> the subject ids it was fitted on (for splits.check_disjoint)."""
        return {f"{m} scaler": s.fitted_on for m, s in self.scalers.items()}

    def state(self) -> dict:
        return {m: s.state() for m, s in self.scalers.items()}

    @classmethod
    def from_state(cls, state: dict) -> Preprocessor:
        return cls({m: TabularScaler.from_state(s) for m, s in state.items()})


def _tabular_columns(cohort: Cohort, modality: str) -> tuple[list[str], dict[str, list[str]]]:
    spec = cohort.spec[modality]
    categories = {c: list(v) for c, v in spec.categories.items()}
    numeric = [n for n in spec.feature_names if n not in categories]
    return numeric, categories


def _numeric_matrix(cohort: Cohort, modality: str, ids: list[str]) -> np.ndarray:
    if not ids:
        return np.zeros((0, len(_tabular_columns(cohort, modality)[0])))
    if modality == "clinical":
        return cohort.clinical_values(ids)[cohort.clinical_numeric].to_numpy(dtype=np.float64)
    if modality == "genotype":
        return cohort.read_genotypes(ids).astype(np.float64)
    if modality == "freesurfer":
        keys = [(i, cohort.baseline.at[i, "VISCODE"]) for i in ids]
        return cohort.freesurfer.loc[keys].to_numpy(dtype=np.float64)
    raise ConfigError(f"{modality} is not a tabular modality")


def _categorical_rows(cohort: Cohort, modality: str, ids: list[str]) -> list[list]:
    if modality != "clinical" or not cohort.clinical_categorical:
        return [[] for _ in ids]
    values = cohort.clinical_values(ids)[cohort.clinical_categorical]
    return values.astype(object).where(values.notna(), None).values.tolist()


# ----------------------------------------------------------------------------- per-subject transforms
def _volume_views(volume: np.ndarray, view: str, config: PrepareConfig, atlas_labels) -> np.ndarray:
    """One volume (atlas grid) -> the array of a view, intensity z-scored inside the brain."""
    from adfuse.config import require

    transforms = require("monai.transforms", "imaging", "preparing image volumes")
    NormalizeIntensity, Resize = transforms.NormalizeIntensity, transforms.Resize  # noqa: N806

    image = torch.from_numpy(volume)[None]  # channel first
    image = NormalizeIntensity(nonzero=True)(image)
    if view == "volume":
        return Resize(config.volume_shape, mode="trilinear")(image).numpy()[0]
    if view == "slice":
        axis = {"sagittal": 1, "coronal": 2, "axial": 3}[config.slice_axis]
        middle = image.shape[axis] // 2
        plane = image.select(axis, middle)  # [1, a, b]
        return Resize(config.slice_shape, mode="bilinear")(plane).numpy()[0]
    if view == "regions":  # mean z-scored intensity per atlas region, for classical models
        labels, indices = atlas_labels
        sums = np.bincount(
            labels.ravel(), weights=image.numpy()[0].ravel(), minlength=max(indices) + 1
        )
        counts = np.bincount(labels.ravel(), minlength=max(indices) + 1)
        return (sums[indices] / np.maximum(counts[indices], 1)).astype(np.float32)
    if view == "roi":
        # torch's interpolation, which MONAI's Resize calls (same numbers to 1e-6): on ~80 small
        # crops per subject, Resize's per-call overhead made it ~19x slower (0.41 s a subject)
        volume = image.as_tensor() if hasattr(image, "as_tensor") else image
        size = (config.roi_size,) * 3
        crops = [
            nn_functional.interpolate(
                volume[None, :, x0:x1, y0:y1, z0:z1], size=size, mode="trilinear"
            )[0, 0]
            for (x0, x1), (y0, y1), (z0, z1) in atlas_labels
        ]
        return torch.stack(crops).numpy()
    raise ConfigError(f"unknown volume view {view!r}")


def _series_view(series: np.ndarray, view: str, length: int) -> np.ndarray:
    mean = series.mean(axis=0, keepdims=True)
    std = series.std(axis=0, keepdims=True)
    z = (series - mean) / np.where(std > 1e-8, std, 1.0)
    if view == "connectivity":
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.corrcoef(z.T)
        corr = np.nan_to_num(corr, nan=0.0)
        np.fill_diagonal(corr, 0.0)
        return np.arctanh(np.clip(corr, -0.999, 0.999)).astype(np.float32)
    out = np.zeros((length, series.shape[1]), dtype=np.float32)
    n = min(length, len(z))
    out[:n] = z[:n]
    return out


def region_boxes(labels: np.ndarray, indices: list[int]) -> list[tuple[tuple[int, int], ...]]:
    """Bounding box (start, stop) per axis of each atlas region."""
    boxes = []
    for index in indices:
        where = np.argwhere(labels == index)
        if len(where) == 0:
            raise DataError(f"region {index} has no voxel in the atlas", file=layout.ATLAS_IMAGE)
        low, high = where.min(axis=0), where.max(axis=0) + 1
        boxes.append(tuple((int(a), int(b)) for a, b in zip(low, high, strict=True)))
    return boxes


# ----------------------------------------------------------------------------- the cache
def default_cache_dir() -> Path:
    return Path(os.environ.get("ADFUSE_CACHE_DIR", Path.home() / ".cache" / "adfuse"))


class ModalityCache:
    """One memory-mapped array [subjects with the modality, ...] plus its id index.

    Built in a temporary folder and renamed when complete, by one process at a time (a second one
    waits on the entry's lock, then opens what the first built); the ``index.json`` carries the
    shape, dtype, a checksum of the ids and a crc32 of each row, and a cache that fails to open or
    disagrees is rebuilt. Every row is verified when the entry is opened: bytes overwritten in
    place leave the shape and size as they were (the demo's 369 MB t1-roi entry: 0.06 s from
    the page cache, 0.2 s from disk).
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.ids: list[str] = []
        self.array: np.ndarray | None = None
        self.position: dict[str, int] = {}

    def open(self) -> bool:
        try:
            meta = json.loads((self.folder / "index.json").read_text())
            array = np.load(self.folder / "data.npy", mmap_mode="r")
            if list(array.shape) != meta["shape"] or str(array.dtype) != meta["dtype"]:
                return False
            if meta["ids_sha256"] != _hash_ids(meta["ids"]):
                return False
            # an entry of an older adfuse has no row checksums: a KeyError, rebuilt like a bad one
            if _row_checksums(array) != meta["row_crc32"]:
                return False
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
            return False
        self.ids, self.array = meta["ids"], array
        self.position = {i: n for n, i in enumerate(self.ids)}
        return True

    def build(self, ids: list[str], make, shape: tuple[int, ...], dtype, progress: str) -> None:
        from tqdm.auto import tqdm

        self.folder.parent.mkdir(parents=True, exist_ok=True)
        # the caller holds the entry's lock: a .tmp-* sibling is what a killed build left behind
        for stale in self.folder.parent.glob(f"{self.folder.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        building = self.folder.with_name(self.folder.name + f".tmp-{os.getpid()}")
        building.mkdir()
        try:
            data = np.lib.format.open_memmap(
                building / "data.npy", mode="w+", dtype=dtype, shape=(len(ids), *shape)
            )
            for n, subject in enumerate(
                tqdm(ids, desc=progress, leave=False, disable=len(ids) < 50)
            ):
                data[n] = make(subject)
            data.flush()
            row_crc32 = _row_checksums(data)
            del data
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)  # a failed build leaves nothing behind
            raise
        meta = {
            "ids": ids,
            "ids_sha256": _hash_ids(ids),
            "shape": [len(ids), *shape],
            "dtype": np.dtype(dtype).name,
            "row_crc32": row_crc32,
        }
        (building / "index.json").write_text(json.dumps(meta))
        if self.folder.exists():
            shutil.rmtree(self.folder)
        os.replace(building, self.folder)
        if not self.open():
            raise DataError("the cache could not be read back after writing", file=str(self.folder))

    def get(self, subject: str) -> np.ndarray:
        return np.asarray(self.array[self.position[subject]], dtype=np.float32)


def _hash_ids(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def _row_checksums(array: np.ndarray) -> list[int]:
    """The crc32 of each row's bytes, as stored on disk."""
    return [zlib.crc32(array[n]) for n in range(len(array))]


def cache_key(fingerprint: dict, modality: str, view: str, config: PrepareConfig) -> str:
    relevant = {
        "version": CACHE_VERSION,
        "fingerprint": fingerprint,
        "modality": modality,
        "view": view,
        "config": config.model_dump(mode="json", exclude={"views"}),
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:20]


# ----------------------------------------------------------------------------- the Dataset
class CohortDataset(torch.utils.data.Dataset):
    """Items ``{"id", "inputs", "present", "target"}`` for the subjects of one task (and split)."""

    def __init__(
        self,
        cohort: Cohort,
        task: Task,
        ids: list[str],
        modalities: list[str],
        preprocessor: Preprocessor,
        config: PrepareConfig,
        cache_dir: Path,
        *,
        labelled: bool = True,
        absent: dict[str, tuple[int, ...]] | None = None,
    ):
        """``labelled=False`` allows subjects without a target (prediction: target -1 or NaN);
        ``absent`` names modalities the cohort lacks entirely, with their input shape."""
        self.cohort, self.task, self.ids = cohort, task, list(ids)
        self.modalities, self.preprocessor, self.config = modalities, preprocessor, config
        self.cache_dir, self.labelled, self.absent = Path(cache_dir), labelled, dict(absent or {})
        targets = task.targets(cohort)
        missing = [i for i in self.ids if i not in targets.index]
        if missing and labelled:
            raise DataError(f"not kept by task {task.name}", subject=missing[0])
        dtype = torch.long if task.kind == "classification" else torch.float32
        unknown = -1 if task.kind == "classification" else float("nan")
        values = targets["target"].reindex(self.ids).fillna(unknown).to_numpy()
        self.targets = torch.tensor(values, dtype=dtype)
        absent = absent or {}
        availability = cohort.availability.reindex(columns=modalities, fill_value=False)
        self.available = availability.loc[self.ids].to_numpy(dtype=bool)
        self.shapes: dict[str, tuple[int, ...]] = dict(absent)
        self._tabular: dict[str, np.ndarray] = {}
        self._caches: dict[str, ModalityCache] = {}
        fingerprint = cohort.fingerprint()
        for modality in modalities:
            kind = layout.KINDS[modality]
            if modality in absent:
                continue
            if kind in ("tabular", "genotype"):
                self._prepare_tabular(modality)
            else:
                self._prepare_cached(modality, kind, fingerprint, cache_dir)

    def _prepare_tabular(self, modality: str) -> None:
        scaler = self.preprocessor.scalers[modality]
        column = self.modalities.index(modality)
        have = [i for i, ok in zip(self.ids, self.available[:, column], strict=True) if ok]
        values = np.zeros((len(self.ids), scaler.width), dtype=np.float32)
        if have:
            numeric = _numeric_matrix(self.cohort, modality, have)
            rows = scaler.transform(numeric, _categorical_rows(self.cohort, modality, have))
            values[self.available[:, column]] = rows
        self._tabular[modality] = values
        self.shapes[modality] = (scaler.width,)

    def _prepare_cached(self, modality: str, kind: str, fingerprint: dict, cache_dir: Path) -> None:
        view = self.config.view(modality, kind)
        key = cache_key(fingerprint, modality, view, self.config)
        cache = ModalityCache(Path(cache_dir) / f"{modality}-{view}-{key}")
        subjects = sorted(self.cohort.availability.index[self.cohort.availability[modality]])
        if not cache.open() or not set(subjects) <= set(cache.ids):
            # one builder per entry: a second process waits, then finds the entry built
            with waiting_lock(cache.folder.with_name(cache.folder.name + ".lock")):
                if not cache.open() or not set(subjects) <= set(cache.ids):
                    make, shape, dtype = self._maker(modality, kind, view)
                    cache.build(subjects, make, shape, dtype, f"preparing {modality} ({view})")
        self._caches[modality] = cache
        self.shapes[modality] = tuple(cache.array.shape[1:])

    def _maker(self, modality: str, kind: str, view: str):
        cohort, config = self.cohort, self.config

        def visit(subject: str) -> str:
            return cohort.baseline.at[subject, "VISCODE"]

        if kind == "volume":
            boxes = None
            if view in ("roi", "regions") and cohort.atlas is None:
                raise ConfigError(f"the {view} view needs an atlas (atlas/dseg.nii.gz)")
            if view == "regions":
                boxes = (cohort.atlas.labels(), cohort.atlas.indices)
                shape = (len(cohort.atlas.indices),)
            elif view == "roi":
                boxes = region_boxes(cohort.atlas.labels(), cohort.atlas.indices)
                shape = (len(boxes), *(config.roi_size,) * 3)
            elif view == "slice":
                shape = tuple(config.slice_shape)
            else:
                shape = tuple(config.volume_shape)

            def make(subject):
                volume = cohort.read_volume(modality, subject, visit(subject))
                return _volume_views(volume, view, config, boxes)

            return make, shape, np.float32 if view == "regions" else np.float16
        if kind == "timeseries":
            n_regions = len(cohort.fmri_regions)
            shape = (
                (n_regions, n_regions)
                if view == "connectivity"
                else (config.fmri_length, n_regions)
            )

            def make(subject):
                return _series_view(
                    cohort.read_timeseries(subject, visit(subject)), view, config.fmri_length
                )

            return make, shape, np.float32
        if kind == "text":
            from adfuse.models.text import load_tokenizer

            tokenizer = load_tokenizer(config.text_model)

            def make(subject):
                encoded = tokenizer(
                    cohort.note(subject, visit(subject)) or "",
                    max_length=config.text_max_tokens,
                    truncation=True,
                    padding="max_length",
                )
                return np.asarray(encoded["input_ids"], dtype=np.int32)

            return make, (config.text_max_tokens,), np.int32
        raise ConfigError(f"no preparation for {modality} ({kind})")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Item:
        subject = self.ids[index]
        inputs, present = {}, {}
        for column, modality in enumerate(self.modalities):
            here = bool(self.available[index, column])
            if modality in self._tabular:
                array = self._tabular[modality][index]
            elif here:
                array = self._caches[modality].get(subject)
            else:
                array = np.zeros(self.shapes[modality], dtype=np.float32)
            tensor = torch.from_numpy(np.array(array))
            if layout.KINDS[modality] == "text":
                tensor = tensor.long()
            inputs[modality], present[modality] = tensor, here
        return Item(
            id=subject,
            inputs=inputs,
            present=present,
            target=self.targets[index],
            source=(self, index),
        )

    def with_config(
        self, config: PrepareConfig, absent: dict[str, tuple[int, ...]] | None = None
    ) -> CohortDataset:
        """The same subjects, modalities and fitted statistics prepared with ``config`` (another
        model's views; ``absent``: the input shapes, in those views, of the modalities the cohort
        lacks); built once per config and kept."""
        if config == self.config:
            return self
        key = config.model_dump_json()
        variants = self.__dict__.setdefault("_variants", {})
        if key not in variants:
            variants[key] = CohortDataset(
                self.cohort,
                self.task,
                self.ids,
                self.modalities,
                self.preprocessor,
                config,
                self.cache_dir,
                labelled=self.labelled,
                absent={**self.absent, **(absent or {})},
            )
        return variants[key]

    def batch(self, indices: list[int] | None = None) -> Batch:
        indices = range(len(self)) if indices is None else indices
        return collate([self[i] for i in indices])


def usable_modalities(cohort: Cohort, requested: list[str] | None) -> list[str]:
    """The requested modalities (all the cohort has when None), checked against the cohort."""
    have = list(cohort.modalities)
    if requested is None:
        chosen = have
        if "notes" in chosen and not _text_available():
            chosen = [m for m in chosen if m != "notes"]
        return chosen
    unknown = [m for m in requested if m not in layout.MODALITIES]
    if unknown:
        from adfuse.errors import did_you_mean

        raise did_you_mean("modality", unknown[0], layout.MODALITIES)
    absent = [m for m in requested if m not in have]
    if absent:
        raise ConfigError(
            f"modality '{absent[0]}' is not in this dataset (it has: {', '.join(have)})"
        )
    if "notes" in requested and not _text_available():
        raise ConfigError("the notes modality needs the text extra: pip install 'adfuse[text]'")
    return list(dict.fromkeys(requested))


def _text_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("transformers") is not None


def dataset(
    cohort: Cohort,
    task: Task | str,
    modalities: list[str] | None = None,
    split: Split | None = None,
    part: Literal["train", "val", "test"] | None = None,
    *,
    ids: list[str] | None = None,
    preprocessor: Preprocessor | None = None,
    config: PrepareConfig | None = None,
    cache_dir: Path | str | None = None,
) -> CohortDataset:
    """A torch Dataset of the task's subjects (or ``split.<part>``, or ``ids``).

    Fitted statistics come from ``preprocessor``, else are fitted on ``split.train`` (or, with no
    split, on the dataset's own subjects: fine for exploring, never for an evaluation).
    """
    from adfuse import tasks

    task = tasks.get(task)
    config = config or PrepareConfig()
    chosen = usable_modalities(cohort, modalities)
    targets = task.targets(cohort)
    if ids is None:
        ids = getattr(split, part) if (split is not None and part) else list(targets.index)
    if preprocessor is None:
        fit_ids = split.train if split is not None else list(ids)
        preprocessor = Preprocessor.fit(cohort, chosen, fit_ids)
    return CohortDataset(
        cohort,
        task,
        list(ids),
        chosen,
        preprocessor,
        config,
        Path(cache_dir) if cache_dir else default_cache_dir(),
    )
