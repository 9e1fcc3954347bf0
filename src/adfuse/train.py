"""One training engine for every model: ``adfuse.train.fit(dataset, TrainConfig(...), out)``.

It runs the stages a model declares (``stages()``: which parameters train, epochs, lr) with AdamW,
optional class weights, gradient clipping and early stopping on the validation split; checkpoints
``best`` and ``last`` as safetensors (optimizer state and counters in ``last_state.pt``, loaded with
``weights_only=True``) so that ``resume=True`` continues a killed run to the same result; then it
evaluates the best weights on the test split and writes the run folder (see ``adfuse.runs``).

Reproducibility: every random draw is derived from the run seed and the (stage, epoch) position —
the shuffling order and dropout of an epoch do not depend on what ran before — so a resumed run and
an uninterrupted one give identical weights on CPU. The number of torch threads changes how CPU
kernels split their sums (results differ in the last bits), so it is part of the saved state: a
resumed run trains and evaluates with the thread count the run started with.
"""

from __future__ import annotations

import csv
import io
import json
import math
import pickle
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, ValidationError, field_validator

from adfuse.config import StrictModel, absolute_if_local, pydantic_message
from adfuse.errors import ConfigError, DataError, TrainingDivergedError
from adfuse.io import (
    atomic_target,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    is_nonempty_dir,
)
from adfuse.prepare import Batch, PrepareConfig
from adfuse.runs import RUN_FILE, RUN_FORMAT, git_commit, locked, package_versions, read_run

CHECKPOINTS = "checkpoints"


class TrainConfig(StrictModel):
    """Everything needed to retrain a run (dumped into run.json)."""

    model: str
    task: str = "diagnosis"
    modalities: list[str] | None = None
    preset: Literal["cpu", "paper"] = "cpu"
    overrides: dict[str, Any] = Field(default_factory=dict)

    @field_validator("overrides")
    @classmethod
    def _absolute_folders(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        """Model and encoder folders (``*_encoder``, ``*_model``, ``*_path`` keys) given
        relative to here are stored absolute: the run then works from any directory."""
        return {
            key: absolute_if_local(value)
            if isinstance(value, str) and key.endswith(("_encoder", "_model", "_path"))
            else value
            for key, value in overrides.items()
        }

    seed: int = Field(0, ge=0)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    patience: int = Field(8, ge=1)
    monitor: Literal["val_loss", "val_score"] = "val_loss"
    grad_clip: float | None = Field(1.0, gt=0)
    class_weighted: bool = False
    fraction: float = Field(1.0, gt=0, le=1)
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    device: str = "cpu"
    prepare: PrepareConfig = Field(default_factory=PrepareConfig)
    n_boot: int = Field(1000, ge=0)  # bootstrap resamples of the test CIs; 0: no CI
    patterns: bool = True

    @classmethod
    def build(cls, **values: Any) -> TrainConfig:
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            raise ConfigError(pydantic_message(error, "train config")) from None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' asked for, but CUDA is not available here")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}' (cpu, cuda, cuda:N or auto)") from None


# ----------------------------------------------------------------------------- the session
@dataclass
class Session:
    """A loaded run: cohort, task, split, model and the prepared datasets."""

    cohort: Any
    task: Any
    split: Any
    model: Any
    train: Any
    val: Any
    test: Any
    preprocessor: Any


def open_session(
    dataset: Path, config: TrainConfig, run_dir: Path, cache_dir=None, cohort=None
) -> Session:
    """Load the cohort (unless given) and build split, model and datasets (writing split.json
    once)."""
    from adfuse import models, splits, tasks
    from adfuse.data.cohort import load_cohort
    from adfuse.prepare import Preprocessor
    from adfuse.prepare import dataset as make_dataset

    cohort = cohort if cohort is not None else load_cohort(dataset)
    task = tasks.get(config.task)
    split_path = run_dir / "split.json"
    if split_path.exists():
        split = splits.Split.load(split_path)
        known = set(cohort.subjects)
        unknown = [
            s for part in (split.train, split.val, split.test) for s in part if s not in known
        ]
        if unknown:
            raise ConfigError(
                f"{split_path}: subject {unknown[0]} ({len(unknown)} in all) is not in "
                f"{cohort.root}; the run was made on another dataset"
            )
    else:
        split = splits.subject_split(
            cohort, task, seed=config.seed, fractions=config.split_fractions
        )
        if config.fraction < 1:
            split = split.subset_train(config.fraction, task.targets(cohort), config.seed, cohort)
        split.save(split_path)
    torch.manual_seed(config.seed)
    model = models.create(
        config.model,
        cohort.spec,
        task,
        preset=config.preset,
        modalities=config.modalities,
        prepare=config.prepare,
        **config.overrides,
    )
    prepare = model.prepare_config()
    preprocessor = Preprocessor.fit(cohort, model.modalities, split.train)
    splits.check_disjoint(split, preprocessor.fitted_on())
    parts = {
        part: make_dataset(
            cohort,
            task,
            model.modalities,
            split,
            part,
            preprocessor=preprocessor,
            config=prepare,
            cache_dir=cache_dir,
        )
        for part in ("train", "val", "test")
    }
    fit_statistics = getattr(model, "fit_statistics", None)
    if fit_statistics is not None:  # a model's own training-split statistics (R-GenIMA's SNP QC)
        fit_statistics(parts["train"])
        splits.check_disjoint(split, model.fitted_on())
    return Session(cohort, task, split, model, **parts, preprocessor=preprocessor)


# ----------------------------------------------------------------------------- fit
def fit(
    dataset: str | Path,
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Train ``config.model`` on ``dataset`` into the run folder ``out``; returns ``out``."""
    from adfuse import models, tasks

    out = Path(out)
    models.info(config.model)  # unknown names fail before anything is written
    tasks.get(config.task)
    resolve_device(config.device)
    if resume:
        _check_resumable(out, config)
    elif is_nonempty_dir(out) and not force:
        raise ConfigError(f"{out}: folder is not empty; pass --force to replace it or --resume")
    created = not out.exists()
    try:
        with locked(out):  # checked again under the lock: another process may be writing it
            if resume:
                if _check_resumable(out, config):
                    return out
            elif force:
                _empty_folder(out)
            _fit_locked(Path(dataset), config, out, cache_dir, progress)
    except BaseException:
        if created and not (out / RUN_FILE).exists():
            shutil.rmtree(out, ignore_errors=True)  # a run that never started leaves nothing
        raise
    return out


def _check_resumable(out: Path, config: TrainConfig) -> bool:
    """Whether the run in ``out`` is already complete; a ConfigError when it cannot be resumed."""
    previous = read_run(out)
    if previous["config"] != config.model_dump(mode="json"):
        difference = _first_difference(previous["config"], config.model_dump(mode="json"))
        raise ConfigError(f"{out}: --resume with a different config ({difference})")
    return previous.get("status") == "complete"


def _empty_folder(folder: Path) -> None:
    """Remove everything in ``folder`` but its lock file (--force)."""
    from adfuse.runs import LOCK_FILE

    for path in folder.iterdir():
        if path.name == LOCK_FILE:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _fit_locked(dataset: Path, config: TrainConfig, out: Path, cache_dir, progress: bool) -> None:
    from adfuse.evaluate import EnergyMeter

    session = open_session(dataset, config, out, cache_dir)
    _write_run_json(out, config, session, status="training")
    atomic_write_json(out / "preprocessing.json", session.preprocessor.state())
    if hasattr(session.model, "statistics_report"):
        atomic_write_json(out / "model_fitted.json", session.model.statistics_report())
    device = resolve_device(config.device)
    threads = torch.get_num_threads()
    try:  # a resumed run may switch to the thread count it started with; ours is restored after
        started = time.perf_counter()
        with EnergyMeter() as energy:
            if getattr(session.model, "kind", "torch") == "sklearn":
                session.model.fit(session.train.batch(), session.val.batch(), config.seed)
            else:
                _train_torch(session, config, out, device, progress)
        train_seconds = time.perf_counter() - started
        finish(out, session, config, device, train_seconds, energy.result)
    except TrainingDivergedError as error:  # a killed run stays "training" (resumable); this failed
        _write_run_json(out, config, session, status="failed", error=str(error))
        raise
    finally:
        torch.set_num_threads(threads)
    _write_run_json(out, config, session, status="complete")


def finish(out, session, config, device, train_seconds, energy) -> None:
    """Evaluate the best weights on the test split and write the evaluation files."""
    from adfuse import evaluate, metrics

    model = session.model
    classes = list(session.task.classes)
    predictions = evaluate.predict(model, session.test, device=device, classes=classes)
    scores = metrics.metrics_with_ci(
        session.task.kind,
        predictions.targets,
        predictions.outputs,
        classes,
        config.n_boot,
        config.seed,
    )
    patterns = (
        evaluate.evaluate_patterns(
            model, session.test, classes, config.n_boot, config.seed, device, known=predictions
        )
        if config.patterns
        else None
    )
    evaluate.write_evaluation(out, predictions, scores, patterns)
    example = session.test.batch(list(range(min(4, len(session.test)))))
    atomic_write_json(
        out / "efficiency.json", evaluate.efficiency(model, example, train_seconds, energy)
    )


def _train_torch(session: Session, config: TrainConfig, out: Path, device, progress: bool) -> None:
    from safetensors.torch import load_model
    from tqdm.auto import tqdm

    model = session.model.to(device)
    if config.class_weighted and session.task.kind == "classification":
        counts = torch.bincount(session.train.targets, minlength=len(session.task.classes)).float()
        model.class_weight = (counts.sum() / counts.clamp(min=1) / len(counts)).to(device)
    train, val = session.train.batch(), session.val.batch()
    checkpoints = out / CHECKPOINTS
    checkpoints.mkdir(exist_ok=True)
    state = _load_state(checkpoints, model, device)
    if state.get("threads", torch.get_num_threads()) != torch.get_num_threads():
        torch.set_num_threads(state["threads"])
    history: list[dict] = state.get("history", [])
    stages = model.stages()
    for stage_index, stage in enumerate(stages):
        if stage_index < state.get("stage", 0):
            continue
        resuming_stage = stage_index == state.get("stage", -1) and "epoch" in state
        model.begin_stage(stage, fresh=not resuming_stage)
        _set_trainable(model, stage)
        parameters = [p for p in model.parameters() if p.requires_grad]
        if not parameters:
            raise ConfigError(f"stage '{stage.name}' of {config.model} trains no parameter")
        lr = stage.lr or config.lr
        optimizer = torch.optim.AdamW(
            stage.parameter_groups(model, lr),
            lr=lr,
            weight_decay=config.weight_decay if stage.weight_decay is None else stage.weight_decay,
        )
        first_epoch, best, best_epoch, bad = 0, math.inf, -1, 0
        if resuming_stage:
            optimizer.load_state_dict(state["optimizer"])
            first_epoch, best, best_epoch, bad = (
                state["epoch"] + 1,
                state["best"],
                state["best_epoch"],
                state["bad"],
            )
        epochs = stage.epochs or config.epochs
        bar = tqdm(
            range(first_epoch, epochs),
            desc=f"{config.model} [{stage.name}]",
            disable=not progress,
            leave=False,
        )
        for epoch in bar:
            if bad >= config.patience:
                break
            seed = _derived_seed(config.seed, stage_index, epoch)
            torch.manual_seed(seed)
            shuffled = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
            order = model.epoch_order(epoch, train.present, shuffled)
            started = time.perf_counter()
            model.train()
            losses = []
            for start in range(0, len(order), config.batch_size):
                index = order[start : start + config.batch_size]
                if len(index) < 2 and len(order) > 1:
                    continue  # a batch of one breaks batch statistics; its subject is reshuffled next epoch
                batch = train.select(index).to(device)
                optimizer.zero_grad(set_to_none=True)
                loss = model.loss(batch, model(batch))
                if not torch.isfinite(loss):
                    raise TrainingDivergedError(
                        f"{config.model}: training diverged: the training loss became "
                        f"{loss.item()} at stage '{stage.name}' epoch {epoch}; lower --lr"
                    )
                loss.backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip)
                optimizer.step()
                losses.append(loss.item())
            val_loss, val_score = _validate(model, val, device, config.batch_size)
            monitored = val_loss if config.monitor == "val_loss" else -val_score
            # weights whose validation loss is not finite are broken, whatever the monitor says
            finite = math.isfinite(val_loss) and math.isfinite(monitored)
            improved = finite and monitored < best - 1e-6
            if improved:
                best, best_epoch, bad = monitored, epoch, 0
                _save_weights(model, checkpoints / "best.safetensors", config)
            else:
                bad += 1
            row = {
                "stage": stage.name,
                "epoch": epoch,
                "train_loss": float(np.mean(losses)) if losses else float("nan"),
                "val_loss": val_loss,
                "val_score": val_score,
                "best": improved,
                "seconds": round(time.perf_counter() - started, 3),
                **{f"aux_{k}": v for k, v in model.auxiliary_losses().items()},
            }
            history.append(row)
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", val=f"{val_loss:.3f}")
            _save_weights(model, checkpoints / "last.safetensors", config)
            _save_state(
                checkpoints,
                {
                    "stage": stage_index,
                    "epoch": epoch,
                    "best": best,
                    "best_epoch": best_epoch,
                    "bad": bad,
                    "optimizer": optimizer.state_dict(),
                    "history": history,
                    "threads": torch.get_num_threads(),
                    "model": model.state_dict(),
                },
            )
            _write_history(out, history)
        if best_epoch < 0:
            tried = [row["val_loss"] for row in history if row["stage"] == stage.name]
            watched = "loss" if config.monitor == "val_loss" else "loss or score"
            raise TrainingDivergedError(
                f"{config.model}: training diverged: the validation {watched} was not finite at "
                f"any epoch of stage '{stage.name}' ({len(tried)} epochs, last val_loss "
                f"{tried[-1] if tried else 'none'}); lower --lr, or check the data"
            )
        # the next stage (and the evaluation) starts from this stage's best weights
        load_model(model, str(checkpoints / "best.safetensors"), device=str(device))
        _save_weights(model, checkpoints / "last.safetensors", config)
        _save_state(
            checkpoints,
            {
                "stage": stage_index + 1,
                "history": history,
                "threads": torch.get_num_threads(),
                "model": model.state_dict(),
            },
        )
        state = {}
    model.begin_stage(None)


# ----------------------------------------------------------------------------- reloading a run
def load_trained(run_dir: str | Path, dataset: str | Path | None = None, cache_dir=None) -> Session:
    """A finished run's session with the best weights loaded (``dataset`` defaults to the one it
    was trained on). Classical models are refitted on the same training subjects and seed."""
    from adfuse.data.cohort import load_cohort

    run_dir = Path(run_dir)
    run = read_run(run_dir)
    if run.get("status") == "failed":
        raise ConfigError(f"{run_dir}: the run failed ({run.get('error', 'no reason recorded')})")
    if run.get("status") != "complete":
        raise ConfigError(
            f"{run_dir}: the run is not complete (status {run.get('status')!r}); use --resume"
        )
    config = TrainConfig.build(**run["config"])
    dataset = Path(dataset or run["dataset"]["path"])
    cohort = load_cohort(dataset)
    check_fingerprint(run, cohort)  # before the split's subjects are looked up in it
    session = open_session(dataset, config, run_dir, cache_dir, cohort)
    if getattr(session.model, "kind", "torch") == "sklearn":
        session.model.fit(session.train.batch(), session.val.batch(), config.seed)
    else:
        load_weights(session.model, run_dir / CHECKPOINTS / "best.safetensors")
    return session


def load_weights(model, path: Path) -> None:
    """A run's safetensors weights into ``model``; a damaged or foreign file is a DataError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    if not path.is_file():
        raise ConfigError(f"{path}: missing; the run folder is incomplete")
    try:
        load_model(model, str(path), strict=True)
    except (SafetensorError, OSError, RuntimeError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"cannot load the weights ({detail}); the file is damaged or of another model",
            file=str(path),
        ) from None


def _read_run_json(path: Path) -> Any:
    """A JSON file of a run folder; a missing or damaged one is a ConfigError naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: missing; the run folder is incomplete") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None


def check_fingerprint(run: dict, cohort) -> None:
    """The dataset must be the one the run was trained on; name what changed."""
    then, now = run["dataset"]["fingerprint"], cohort.fingerprint()
    changed = [key for key in then if then[key] != now.get(key)]
    if changed:
        raise ConfigError(
            f"{cohort.root}: not the dataset this run was trained on ({', '.join(changed)} "
            "changed); pass the original dataset, or use `adfuse predict` for new subjects"
        )


def check_spec(run: dict, cohort) -> list[str]:
    """Modalities of the run that the cohort has; a different spec for one of them is refused."""
    from adfuse.data.cohort import ModalitySpec

    usable = []
    for modality, stored in run["spec"].items():
        if modality not in cohort.spec:
            continue
        then, now = ModalitySpec.from_dict(stored), cohort.spec[modality]
        for field_name in ("kind", "feature_names", "categories"):
            if getattr(then, field_name) != getattr(now, field_name):
                raise ConfigError(
                    f"{cohort.root}: {modality} {field_name.replace('_', ' ')} differ from the "
                    f"run's ({_spec_difference(getattr(then, field_name), getattr(now, field_name))})"
                )
        if then.kind == "volume" and then.shape != now.shape:
            raise ConfigError(
                f"{cohort.root}: {modality} volumes are {now.shape}, the run's were {then.shape}"
            )
        usable.append(modality)
    return usable


def _spec_difference(then, now) -> str:
    if isinstance(then, tuple) and isinstance(now, tuple):
        missing = [x for x in then if x not in now][:3]
        extra = [x for x in now if x not in then][:3]
        return f"{len(then)} then, {len(now)} now; missing {missing}, new {extra}"
    return f"{then!r} then, {now!r} now"


def predict_dataset(run_dir: str | Path, dataset: str | Path, cache_dir=None):
    """Predictions of a finished run for every subject of ``dataset`` (any modality may be absent).

    Returns a pandas DataFrame: id, then prob_<class> per class (classification) or prediction.
    """
    import pandas as pd

    from adfuse import evaluate, models, tasks
    from adfuse.data.cohort import ModalitySpec, load_cohort
    from adfuse.prepare import CohortDataset, Preprocessor, default_cache_dir, input_shape

    run_dir = Path(run_dir)
    run = read_run(run_dir)
    config = TrainConfig.build(**run["config"])
    cohort = load_cohort(dataset)
    usable = check_spec(run, cohort)
    spec = {m: ModalitySpec.from_dict(s) for m, s in run["spec"].items()}
    task = tasks.get(config.task)
    if run["model"] in models.available(kind="sklearn"):
        model = load_trained(run_dir, cache_dir=cache_dir).model
    else:
        torch.manual_seed(config.seed)
        model = models.create(
            config.model,
            spec,
            task,
            config.preset,
            run["modalities"],
            config.prepare,
            **config.overrides,
        )
        load_weights(model, run_dir / CHECKPOINTS / "best.safetensors")
    prepare = model.prepare_config()
    preprocessor = Preprocessor.from_state(_read_run_json(run_dir / "preprocessing.json"))
    absent = {
        m: input_shape(spec[m], model.views().get(m), prepare)
        for m in model.modalities
        if m not in usable
    }
    data = CohortDataset(
        cohort,
        task,
        cohort.subjects,
        model.modalities,
        preprocessor,
        prepare,
        Path(cache_dir) if cache_dir else default_cache_dir(),
        labelled=False,
        absent=absent,
    )
    result = evaluate.predict(model, data, device=resolve_device(config.device))
    frame = pd.DataFrame({"id": result.ids})
    if task.kind == "classification":
        for index, name in enumerate(task.classes):
            frame[f"prob_{name}"] = np.asarray(result.outputs)[:, index]
        frame["predicted"] = [task.classes[i] for i in np.asarray(result.outputs).argmax(axis=1)]
    else:
        frame["prediction"] = np.asarray(result.outputs)
    frame["modalities"] = [
        "+".join(m for m, ok in zip(model.modalities, row, strict=True) if ok) or "(none)"
        for row in data.available
    ]
    return frame


def _validate(model, val: Batch, device, batch_size: int) -> tuple[float, float]:
    model.eval()
    losses, outputs = [], []
    with torch.no_grad():
        for start in range(0, len(val), batch_size):
            batch = val.select(list(range(start, min(start + batch_size, len(val))))).to(device)
            out = model(batch)
            losses.append(model.loss(batch, out).item() * len(batch))
            outputs.append(out.cpu())
    out = torch.cat(outputs)
    target = val.target
    if model.task_kind == "classification":
        predicted = out.argmax(dim=1)
        recalls = [
            (predicted[target == c] == c).float().mean().item()
            for c in range(model.n_classes)
            if (target == c).any()
        ]
        score = float(np.mean(recalls))
    else:
        score = -float(torch.sqrt(torch.mean((out - target.float()) ** 2)))
    return float(np.sum(losses) / len(val)), score


def _set_trainable(model, stage) -> None:
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(stage.applies_to(name))


def _derived_seed(seed: int, stage: int, epoch: int) -> int:
    return (seed * 1_000_003 + stage * 10_007 + epoch * 101 + 17) % (2**31 - 1)


def _metadata(config: TrainConfig) -> dict[str, str]:
    from adfuse import __version__

    return {"model": config.model, "preset": config.preset, "adfuse": __version__}


def _save_weights(model, path: Path, config: TrainConfig) -> None:
    """save_model through a temporary sibling and a rename: a kill never leaves half a file."""
    from safetensors.torch import save_model

    with atomic_target(path) as temporary:
        save_model(model, str(temporary), metadata=_metadata(config))


def _save_state(checkpoints: Path, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(checkpoints / "last_state.pt", buffer.getvalue())


def _load_state(checkpoints: Path, model, device) -> dict:
    """Counters, optimizer and weights of an interrupted run (empty for a new one)."""
    path = checkpoints / "last_state.pt"
    if not path.exists():
        return {}
    # weights travel inside the state file, so weights and counters are always of one epoch
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        model.load_state_dict(state.pop("model"))
    except (RuntimeError, EOFError, OSError, KeyError, pickle.UnpicklingError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"cannot load the training state ({detail}); remove the run folder and train again",
            file=str(path),
        ) from None
    return state


def _write_history(out: Path, history: list[dict]) -> None:
    columns = list(dict.fromkeys(key for row in history for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(out / "history.csv", buffer.getvalue())


def _write_run_json(
    out: Path, config: TrainConfig, session: Session, status: str, error: str | None = None
) -> None:
    """run.json with ``status`` training, complete or failed (then ``error``: why)."""
    atomic_write_json(
        out / RUN_FILE,
        {
            "format": RUN_FORMAT,
            "status": status,
            **({"error": error} if error else {}),
            "model": config.model,
            "task": config.task,
            "seed": config.seed,
            "modalities": session.model.modalities,
            "config": config.model_dump(mode="json"),
            "model_config": session.model.config.model_dump(mode="json"),
            "spec": {m: session.cohort.spec[m].to_dict() for m in session.model.modalities},
            "dataset": {
                "path": str(Path(session.cohort.root).resolve()),
                "fingerprint": session.cohort.fingerprint(),
            },
            "versions": package_versions(),
            "git_commit": git_commit(),
        },
    )


def _first_difference(old: dict, new: dict, prefix: str = "") -> str:
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            if isinstance(old.get(key), dict) and isinstance(new.get(key), dict):
                return _first_difference(old[key], new[key], f"{prefix}{key}.")
            return f"{prefix}{key}: {old.get(key)!r} then, {new.get(key)!r} now"
    return "no difference"
