"""Evaluate a trained model: predictions, metrics with CIs, every modality-availability pattern,
efficiency (parameters, FLOPs, throughput, memory) and the energy of training.

- ``predict`` runs a torch model (eval mode, no grad; softmax of logits for classification) or a
  scikit-learn baseline (``model.predict(batch)`` gives probabilities or predictions) over a
  Dataset or batches, and returns a ``PredictionSet``.
- ``evaluate_patterns`` withholds modalities with ``Batch.without`` and scores each pattern on the
  subjects who really have at least one of the kept modalities.
- ``efficiency`` and ``EnergyMeter`` fill ``efficiency.json``; ``write_evaluation`` writes
  ``metrics.json``, ``predictions/test.csv`` and ``patterns.csv`` atomically.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import resource
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from adfuse.errors import ConfigError
from adfuse.io import atomic_write_json, atomic_write_text
from adfuse.metrics import bootstrap_ci, metric_function

if TYPE_CHECKING:
    from adfuse.prepare import Batch

MAX_FULL_PATTERNS = 6  # beyond this many modalities: singles, leave-one-out and all only
WATTS_PER_CORE = 10.0  # fallback energy estimate: assumed power of one busy core
GRAMS_CO2_PER_KWH = 369.5  # USA 2023 carbon intensity (the table codecarbon's offline mode uses)
CODECARBON_METHOD = "codecarbon offline estimate (CPU TDP x load, RAM fixed; not a measurement)"


# ----------------------------------------------------------------------------- predictions
@dataclass
class PredictionSet:
    """Per-subject outputs: probabilities ``[n, C]`` (classification) or predictions ``[n]``."""

    ids: list[str]
    targets: np.ndarray
    outputs: np.ndarray
    task_kind: str
    classes: list[str] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def frame(self) -> pd.DataFrame:
        """Columns ``id``, ``target``, then ``prob_<class>`` per class or ``prediction``."""
        table = pd.DataFrame({"id": self.ids, "target": self.targets})
        if self.task_kind == "classification":
            names = self.classes or [str(k) for k in range(self.outputs.shape[1])]
            for k, name in enumerate(names):
                table[f"prob_{name}"] = self.outputs[:, k]
        else:
            table["prediction"] = self.outputs
        return table


def is_sklearn(model: Any) -> bool:
    """A classical baseline: ``kind == "sklearn"``, or a ``predict(batch)`` and no ``forward``."""
    if getattr(model, "kind", None) == "sklearn":
        return True
    return callable(getattr(model, "predict", None)) and not hasattr(model, "forward")


def iter_batches(data: Any, batch_size: int = 32) -> Iterator[Batch]:
    """Batches of a Batch, a list/iterable of Batches, or a Dataset of items (``prepare.collate``)."""
    from torch.utils.data import DataLoader

    from adfuse.prepare import Batch, collate

    if isinstance(data, Batch):
        yield data
        return
    if isinstance(data, list | tuple) and data and isinstance(data[0], Batch):
        source: Iterable = data
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        source = DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate)
    else:
        source = data
    for batch in source:
        if not isinstance(batch, Batch):
            raise ConfigError(
                f"expected a Dataset of items or Batches, got an element of type "
                f"{type(batch).__name__}"
            )
        yield batch


@contextmanager
def _inference(model: Any, device: str) -> Iterator[None]:
    """Eval mode and no grad for a torch model (its train/eval mode is restored after)."""
    import torch

    if is_sklearn(model) or not isinstance(model, torch.nn.Module):
        yield
        return
    was_training = model.training
    model.to(device)
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _outputs(model: Any, batch: Batch, device: str) -> np.ndarray:
    """One batch -> probabilities [B, C] or predictions [B] as float64."""
    import torch

    if is_sklearn(model):
        out = model.predict(batch)
        if isinstance(out, torch.Tensor):
            out = out.detach().cpu().numpy()
        out = np.asarray(out, dtype=np.float64)
    else:
        logits = model(batch.to(device))
        if model.task_kind == "classification":
            out = torch.softmax(logits.double(), dim=-1).cpu().numpy()
        else:
            out = logits.double().cpu().numpy()
    if model.task_kind == "regression":
        out = out.reshape(-1)
    if len(out) != len(batch):
        raise ConfigError(f"the model returned {len(out)} outputs for a batch of {len(batch)}")
    return out


def predict(
    model: Any,
    dataset_or_batches: Any,
    device: str = "cpu",
    batch_size: int = 32,
    *,
    classes: list[str] | tuple[str, ...] | None = None,
) -> PredictionSet:
    """Outputs of ``model`` for every subject, in the order of the dataset (or batches)."""
    kind = model.task_kind
    ids: list[str] = []
    targets, outputs = [], []
    with _inference(model, device):
        for batch in iter_batches(dataset_or_batches, batch_size):
            outputs.append(_outputs(model, batch, device))
            targets.append(batch.target.detach().cpu().numpy())
            ids += list(batch.ids)
    if outputs:
        stacked_outputs, stacked_targets = np.concatenate(outputs), np.concatenate(targets)
    else:
        width = len(classes) if (kind == "classification" and classes) else 0
        stacked_outputs = np.zeros((0, width) if kind == "classification" else (0,))
        stacked_targets = np.zeros(0)
    return PredictionSet(
        ids, stacked_targets, stacked_outputs, kind, list(classes) if classes else None
    )


# ----------------------------------------------------------------------------- patterns
def availability_patterns(modalities: list[str]) -> list[tuple[str, ...]]:
    """The kept modalities of each pattern: every non-empty subset, largest first (for more than
    ``MAX_FULL_PATTERNS`` modalities: all, each leave-one-out, each single)."""
    modalities = list(modalities)
    if len(modalities) <= MAX_FULL_PATTERNS:
        sizes = range(len(modalities), 0, -1)
        return [kept for size in sizes for kept in itertools.combinations(modalities, size)]
    leave_one_out = [tuple(m for m in modalities if m != out) for out in modalities]
    singles = [(m,) for m in modalities]
    return list(dict.fromkeys([tuple(modalities), *leave_one_out, *singles]))


def evaluate_patterns(
    model: Any,
    dataset: Any,
    classes: list[str] | tuple[str, ...] | None,
    n_boot: int = 1000,
    seed: int = 0,
    device: str = "cpu",
    *,
    batch_size: int = 32,
    alpha: float = 0.05,
    known: PredictionSet | None = None,
) -> pd.DataFrame:
    """One row per modality-availability pattern of ``model.modalities``.

    Columns: ``pattern`` (kept, "t1+amyloid"), ``n_modalities``, ``withheld`` ("none" when
    nothing is), ``n`` (subjects with at least one kept modality really present), ``n_excluded``,
    then the main metric (balanced_accuracy / rmse) and the second (auc / mae), each with
    ``_low``/``_high`` bootstrap bounds. The test set is collated once and kept in memory.

    Under a pattern a subject's input is its really present modalities among the kept ones, so
    patterns share outputs: each subject is run once per distinct such set (a subject with 2 of
    5 modalities: 3 forwards instead of 31), and every pattern reads its rows from those.
    ``known``: ``predict``'s outputs on the same dataset (same subject order), reused for each
    subject as it is instead of running it again.
    """
    import torch

    from adfuse.prepare import Batch

    kind = model.task_kind
    metric_fn = metric_function(kind, classes)
    reported = ("balanced_accuracy", "auc") if kind == "classification" else ("rmse", "mae")
    modalities = list(model.modalities)
    batches = list(iter_batches(dataset, batch_size))
    for batch in batches:
        missing = [m for m in modalities if m not in batch.present]
        if missing:
            raise ConfigError(
                f"the model uses {missing[0]}, which the dataset does not provide "
                f"(it has: {', '.join(batch.present)})"
            )

    everyone = Batch.cat(batches)
    real = torch.stack([everyone.present[m].bool().cpu() for m in modalities], dim=1)
    bits = 2 ** torch.arange(len(modalities))
    patterns = availability_patterns(modalities)
    # a subject's input under a pattern is its really present modalities among the kept ones:
    # one forward per subject and distinct such set, shared by every pattern that gives it
    effective = {
        kept: ((real & torch.tensor([m in kept for m in modalities])) * bits).sum(1)
        for kept in patterns
    }
    outputs: dict[tuple[int, int], np.ndarray] = {}  # (subject row, code) -> its outputs
    if known is not None and list(known.ids) == list(everyone.ids):
        for i, code in enumerate(((real * bits).sum(1)).tolist()):
            if code:  # the subject as it is: what ``predict`` gave (every pattern keeping it all)
                outputs[(i, code)] = known.outputs[i]
    codes = torch.unique(torch.cat(list(effective.values())))
    # a model may reuse per-subject intermediate results meanwhile (its weights do not change)
    sharing = getattr(model, "inference_cache", None)
    with sharing() if sharing is not None else contextlib.nullcontext():
        for code in codes[codes > 0].tolist():
            rows_of = torch.unique(
                torch.cat([(e == code).nonzero().flatten() for e in effective.values()])
            )
            rows_of = [i for i in rows_of.tolist() if (i, code) not in outputs]
            if not rows_of:
                continue
            given = everyone.select(rows_of).without(
                [m for j, m in enumerate(modalities) if not code & (1 << j)]
            )
            chunks = [
                given.select(list(range(i, min(i + batch_size, len(given)))))
                for i in range(0, len(given), batch_size)
            ]
            out = predict(model, chunks, device, classes=classes).outputs
            outputs.update({(i, code): row for i, row in zip(rows_of, out, strict=True)})
    targets = everyone.target.detach().cpu().numpy()

    rows = []
    for kept in patterns:
        withheld = [m for m in modalities if m not in kept]
        code_of = effective[kept]
        index = code_of.nonzero().flatten().numpy()  # in the dataset's order
        excluded = len(code_of) - len(index)
        pattern_outputs = [
            outputs[(i, code)]
            for i, code in zip(index.tolist(), code_of[index].tolist(), strict=True)
        ]
        predictions = PredictionSet(
            [everyone.ids[i] for i in index],
            targets[index],
            np.stack(pattern_outputs) if pattern_outputs else np.zeros((0,)),
            kind,
            list(classes) if classes else None,
        )
        row: dict[str, Any] = {
            "pattern": "+".join(kept),
            "n_modalities": len(kept),
            "withheld": "+".join(withheld) or "none",
            "n": len(predictions),
            "n_excluded": excluded,
        }
        if len(predictions):
            results = bootstrap_ci(
                predictions.targets, predictions.outputs, metric_fn, n_boot, seed, alpha
            )
        else:
            results = {name: (math.nan, math.nan, math.nan) for name in reported}
        for name in reported:
            row[name], row[f"{name}_low"], row[f"{name}_high"] = results[name]
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- efficiency
def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB else


class _RssSampler:
    """Peak resident memory of this process while the block runs, sampled every ``interval``
    seconds from ``/proc/self/statm`` by a thread (Linux); ``growth_mb`` is the peak above the
    resident size at entry. Large tensors are mmapped and returned to the OS when freed, so a
    forward pass shows as a rise and fall that the process's all-time peak (getrusage) hides."""

    STATM = Path("/proc/self/statm")

    def __init__(self, interval: float = 0.001):
        self.interval = interval
        self.available = self.STATM.exists()
        self.start_mb = self.peak_mb = 0.0

    def _resident_mb(self) -> float:
        return int(self.STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def __enter__(self) -> _RssSampler:
        import threading

        if not self.available:
            return self
        self.start_mb = self.peak_mb = self._resident_mb()
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                self.peak_mb = max(self.peak_mb, self._resident_mb())
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.available:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self.peak_mb, self._resident_mb())

    @property
    def growth_mb(self) -> float:
        return max(0.0, self.peak_mb - self.start_mb)


def _model_device(model: Any) -> str:
    import torch

    if isinstance(model, torch.nn.Module):
        for parameter in model.parameters():
            return str(parameter.device)
    return "cpu"


def efficiency(
    model: Any,
    example_batch: Batch,
    train_seconds: float | None = None,
    energy: dict | None = None,
    *,
    device: str | None = None,
    repeats: int = 5,
) -> dict:
    """Parameters, forward FLOPs per subject, inference throughput, peak memory, train time, energy.

    FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on ``example_batch`` divided by
    its size (it counts matmul, convolution and attention, not elementwise ops). Throughput is
    ``repeats`` timed passes over ``example_batch`` after one warm-up. On CPU, the memory figure is
    the peak of the process's resident memory during the warm-up pass above its value before it
    (sampled by a thread every millisecond; where ``/proc`` is absent, the growth of the
    all-time peak, 0 when an earlier peak was higher); on CUDA ``torch.cuda.max_memory_allocated``.
    scikit-learn baselines get throughput only (parameters and FLOPs are None).
    """
    import torch

    if len(example_batch) == 0:
        raise ConfigError("efficiency needs a non-empty example batch")
    device = device or _model_device(model)
    neural = isinstance(model, torch.nn.Module) and not is_sklearn(model)
    out: dict[str, Any] = {
        "parameters_total": None,
        "parameters_trainable": None,
        "flops_per_subject": None,
    }
    if neural:
        out["parameters_total"] = sum(p.numel() for p in model.parameters())
        out["parameters_trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    batch = example_batch.to(device) if neural else example_batch
    cuda = device.startswith("cuda")
    with _inference(model, device):
        if neural:
            from torch.utils.flop_counter import FlopCounterMode

            counter = FlopCounterMode(display=False)
            # Under no_grad a view of a parameter that requires grad (learned queries expanded
            # to the batch) still says requires_grad but has no grad_fn, which the counter's
            # module tracker rejects: count with every parameter's flag off, then restore.
            flags = [(p, p.requires_grad) for p in model.parameters()]
            try:
                for parameter, _ in flags:
                    parameter.requires_grad_(False)
                with counter:
                    model(batch)
            finally:
                for parameter, flag in flags:
                    parameter.requires_grad_(flag)
            out["flops_per_subject"] = counter.get_total_flops() / len(batch)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        rss_before = _peak_rss_mb()
        with _RssSampler() as sampler:
            _outputs(model, batch, device)  # warm-up
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            _outputs(model, batch, device)
        if cuda:
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
    out["inference_subjects_per_second"] = repeats * len(batch) / max(elapsed, 1e-12)
    out["inference_batch_size"] = len(batch)
    out["device"] = device
    if cuda:
        out["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["peak_memory_method"] = "torch.cuda.max_memory_allocated during inference"
    else:
        if sampler.available:
            out["peak_memory_mb"] = sampler.growth_mb
            out["peak_memory_method"] = (
                "peak resident memory during one inference pass above its value before it "
                "(/proc/self/statm sampled every 1 ms)"
            )
        else:
            out["peak_memory_mb"] = max(0.0, _peak_rss_mb() - rss_before)
            out["peak_memory_method"] = (
                "growth of the process peak RSS (getrusage) during inference; "
                "0 when an earlier peak was higher"
            )
        out["process_peak_rss_mb"] = _peak_rss_mb()
    out["flops_method"] = (
        "torch.utils.flop_counter.FlopCounterMode / batch size (matmul, conv, attention only)"
        if neural
        else None
    )
    out["train_seconds"] = train_seconds
    out["energy"] = energy
    if neural and hasattr(model, "efficiency_report"):  # a model's own figures (per stage, ...)
        with _inference(model, device):
            out["model"] = model.efficiency_report(batch)
    return out


# ----------------------------------------------------------------------------- energy
class EnergyMeter:
    """Energy of the code it wraps: ``with EnergyMeter() as meter: train(...)``; then
    ``meter.result`` = ``{"kwh", "kg_co2", "method", "seconds"}``.

    Uses codecarbon's ``OfflineEmissionsTracker`` when it is installed (no network, no file
    written). Without it, or if it fails, the estimate is process CPU time (children included)
    × ``watts_per_core``, and "method" says so and why. It never raises.
    """

    def __init__(
        self,
        country_iso_code: str = "USA",
        *,
        use_codecarbon: bool = True,
        watts_per_core: float = WATTS_PER_CORE,
        grams_co2_per_kwh: float = GRAMS_CO2_PER_KWH,
    ) -> None:
        self.country_iso_code = country_iso_code
        self.use_codecarbon = use_codecarbon
        self.watts_per_core = watts_per_core
        self.grams_co2_per_kwh = grams_co2_per_kwh
        self.result: dict | None = None
        self._tracker = None
        self._reason = "codecarbon not requested"

    def __enter__(self) -> EnergyMeter:
        self.result, self._tracker = None, None
        self._reason = "codecarbon not requested"
        if self.use_codecarbon:  # before the clocks: its first start detects the hardware (~1 s)
            self._tracker = self._start_codecarbon()
        self._start_wall = time.perf_counter()
        self._start_cpu = self._cpu_seconds()
        return self

    def _start_codecarbon(self):
        # codecarbon reads its log level from the environment at import and ignores it later
        os.environ.setdefault("CODECARBON_LOG_LEVEL", "error")
        try:
            from codecarbon import OfflineEmissionsTracker
        except ImportError:
            self._reason = "codecarbon is not installed"
            return None
        try:
            tracker = OfflineEmissionsTracker(
                country_iso_code=self.country_iso_code,
                output_methods=[],  # save_to_file=False without its DeprecationWarning
                output_dir=tempfile.gettempdir(),
                log_level="error",
            )
            tracker.start()
        except Exception as error:  # codecarbon may fail in many ways; energy must not fail a run
            self._reason = f"codecarbon failed to start: {type(error).__name__}: {error}"
            return None
        return tracker

    @staticmethod
    def _cpu_seconds() -> float:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + children.ru_utime + children.ru_stime

    def __exit__(self, *exc_info) -> bool:
        seconds = time.perf_counter() - self._start_wall
        cpu_seconds = max(0.0, self._cpu_seconds() - self._start_cpu)
        if self._tracker is not None:
            try:
                self._tracker.stop()
                data = self._tracker.final_emissions_data
                self.result = {
                    "kwh": float(data.energy_consumed),
                    "kg_co2": float(data.emissions),
                    "method": CODECARBON_METHOD,
                    "seconds": seconds,
                }
            except Exception as error:  # as in _start_codecarbon: fall back, keep the reason
                self._reason = f"codecarbon failed to stop: {type(error).__name__}: {error}"
            self._tracker = None
        if self.result is None:
            kwh = cpu_seconds * self.watts_per_core / 3.6e6
            self.result = {
                "kwh": kwh,
                "kg_co2": kwh * self.grams_co2_per_kwh / 1000,
                "method": (
                    f"fallback estimate: process CPU time ({cpu_seconds:.1f} s) x "
                    f"{self.watts_per_core:g} W per busy core (assumed), "
                    f"{self.grams_co2_per_kwh:g} gCO2/kWh (assumed); RAM and idle power not "
                    f"counted; not a measurement ({self._reason})"
                ),
                "seconds": seconds,
            }
        return False


# ----------------------------------------------------------------------------- writing
def _json_ready(value: Any) -> Any:
    """NaN/inf -> None (JSON null), numpy scalars -> Python numbers, tuples -> lists."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_metrics(run_dir: Path | str, metrics: dict) -> Path:
    path = Path(run_dir) / "metrics.json"
    atomic_write_json(path, _json_ready(metrics))
    return path


def write_predictions(run_dir: Path | str, predictions: PredictionSet) -> Path:
    path = Path(run_dir) / "predictions" / "test.csv"
    atomic_write_text(path, predictions.frame().to_csv(index=False))
    return path


def write_patterns(run_dir: Path | str, patterns: pd.DataFrame) -> Path:
    path = Path(run_dir) / "patterns.csv"
    atomic_write_text(path, patterns.to_csv(index=False))
    return path


def write_evaluation(
    run_dir: Path | str,
    predictions: PredictionSet,
    metrics: dict,
    patterns: pd.DataFrame | None = None,
) -> dict[str, Path]:
    """Write ``metrics.json`` (NaN as null), ``predictions/test.csv`` and ``patterns.csv``, each
    atomically; returns the paths written."""
    written = {
        "metrics": write_metrics(run_dir, metrics),
        "predictions": write_predictions(run_dir, predictions),
    }
    if patterns is not None:
        written["patterns"] = write_patterns(run_dir, patterns)
    return written
