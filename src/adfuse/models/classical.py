"""Classical baselines on flattened features: ``logreg`` and ``gboost`` (scikit-learn, kind "sklearn").

Features, one block per modality, then one missing-indicator per modality:
tabular and genotype vectors as prepared; a volume as its ``regions`` view (mean intensity per
atlas region); fMRI as the upper triangle of its ``connectivity`` view. An absent modality's block
is zeros and its indicator 0. Notes are not used.

- ``logreg``: StandardScaler -> LogisticRegression (classification) or Ridge (regression).
- ``gboost``: HistGradientBoostingClassifier / Regressor; with a validation batch, it stops early
  on it.

``predict`` returns class **probabilities** ``[B, C]`` (not logits, unlike the torch models) or
predictions ``[B]``. Nothing is pickled: ``logreg``'s fitted arrays come out of ``state()`` as
tensors for safetensors and go back with ``load_state``; a ``gboost`` run is restored by fitting
again on the same training (and validation) subjects with the same seed, which gives the same
model (the fit is deterministic for a given seed).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from pydantic import Field

from adfuse.data import layout
from adfuse.errors import ConfigError
from adfuse.models.base import ModelConfig
from adfuse.models.registry import register

if TYPE_CHECKING:
    from adfuse.data.cohort import ModalitySpec
    from adfuse.prepare import Batch, PrepareConfig
    from adfuse.tasks import Task

ACCEPTS = tuple(m for m in layout.MODALITIES if layout.KINDS[m] != "text")
VIEWS = {"volume": "regions", "timeseries": "connectivity"}


class LogregConfig(ModelConfig):
    C: float = Field(1.0, gt=0)  # inverse L2 strength (classification)
    alpha: float = Field(1.0, ge=0)  # L2 strength (Ridge, regression)
    max_iter: int = Field(2000, ge=1)
    class_weight: Literal["balanced"] | None = None
    # With a validation batch, the regularisation is chosen on it from this grid (C, or 1/alpha
    # for Ridge); the training split alone is fitted. Empty: use C / alpha as given.
    strength_grid: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0)


class GboostConfig(ModelConfig):
    max_iter: int = Field(200, ge=1)
    learning_rate: float = Field(0.1, gt=0)
    max_depth: int | None = None
    max_leaf_nodes: int = Field(31, ge=2)
    min_samples_leaf: int = Field(20, ge=1)
    l2_regularization: float = Field(0.0, ge=0)
    early_stopping: bool = True  # on the validation batch, when one is given
    class_weight: Literal["balanced"] | None = None


class SklearnModel(ABC):
    """A scikit-learn estimator over a ``Batch``'s flattened features (same registry as torch)."""

    kind = "sklearn"
    name: str = ""

    def __init__(
        self,
        spec: dict[str, ModalitySpec],
        task: Task,
        modalities: list[str],
        config: LogregConfig | GboostConfig,
        prepare: PrepareConfig | None = None,
    ):
        from adfuse.prepare import PrepareConfig

        self.spec = spec
        self.prepare = prepare or PrepareConfig()
        self.task_kind = task.kind
        self.n_classes = len(task.classes) if task.kind == "classification" else 0
        self.modalities = list(modalities)
        self.config = config
        self.estimator = None

    # -- what the engine needs to prepare the data
    def views(self) -> dict[str, str]:
        return {m: VIEWS[self.spec[m].kind] for m in self.modalities if self.spec[m].kind in VIEWS}

    def input_shape(self, modality: str) -> tuple[int, ...]:
        from adfuse.prepare import input_shape

        return input_shape(self.spec[modality], self.views().get(modality), self.prepare)

    def prepare_config(self) -> PrepareConfig:
        return self.prepare.model_copy(update={"views": {**self.prepare.views, **self.views()}})

    # -- features
    def features(self, batch: Batch) -> np.ndarray:
        """``[B, features]``: each modality flattened (zeros where absent), then its indicators."""
        blocks, indicators = [], []
        for m in self.modalities:
            x = batch.inputs[m].detach().cpu().float()
            if self.spec[m].kind == "timeseries":
                rows, cols = torch.triu_indices(x.shape[1], x.shape[2], offset=1)
                x = x[:, rows, cols]
            present = batch.present[m].detach().cpu()
            blocks.append(torch.where(present.unsqueeze(1), x.flatten(1), 0.0))
            indicators.append(present.float().unsqueeze(1))
        return torch.cat(blocks + indicators, dim=1).numpy().astype(np.float64)

    def feature_names(self) -> list[str]:
        names: list[str] = []
        for m in self.modalities:
            spec = self.spec[m]
            if spec.kind == "timeseries":
                regions = spec.feature_names or tuple(str(r) for r in range(spec.shape[1]))
                n = len(regions)
                names += [
                    f"{m}:{regions[i]}~{regions[j]}" for i in range(n) for j in range(i + 1, n)
                ]
            elif spec.kind == "volume":
                names += [f"{m}:{r}" for r in spec.feature_names]
            else:
                numeric = [f for f in spec.feature_names if f not in spec.categories]
                onehot = [f"{c}={v}" for c, values in spec.categories.items() for v in values]
                names += [f"{m}:{f}" for f in numeric + onehot]
        return names + [f"{m}:present" for m in self.modalities]

    # -- fit / predict
    @abstractmethod
    def make_estimator(self, seed: int):
        """A fresh, unfitted scikit-learn estimator (its seed set)."""

    def fit(self, train: Batch, val: Batch | None = None, seed: int = 0) -> SklearnModel:
        """Fit on ``train`` (``val``: early stopping for gboost; unused by logreg)."""
        self.estimator = self.make_estimator(seed)
        self._fit(self.features(train), self._target(train), val, seed)
        return self

    def _fit(self, x, y, val, seed) -> None:
        self.estimator.fit(x, y)

    def _target(self, batch: Batch) -> np.ndarray:
        target = batch.target.detach().cpu().numpy()
        return target.astype(np.int64 if self.task_kind == "classification" else np.float64)

    def predict(self, batch: Batch) -> torch.Tensor:
        """Class probabilities ``[B, C]`` (not logits), or predictions ``[B]`` for regression."""
        if self.estimator is None:
            raise ConfigError(f"{self.name or 'the model'} is not fitted: call fit first")
        x = self.features(batch)
        if self.task_kind == "regression":
            return torch.as_tensor(self.estimator.predict(x), dtype=torch.float32)
        probabilities = np.zeros((len(x), self.n_classes))
        # a class missing from the training data keeps probability 0
        probabilities[:, self.classes_seen()] = self.estimator.predict_proba(x)
        return torch.as_tensor(probabilities, dtype=torch.float32)

    def classes_seen(self) -> np.ndarray:
        return np.asarray(self.estimator.classes_, dtype=np.int64)

    def state(self) -> dict[str, torch.Tensor]:
        """Fitted arrays that safetensors can store (empty when the model is restored by refitting)."""
        return {}


class LogisticModel(SklearnModel):
    def _fit(self, x, y, val, seed) -> None:
        grid = self.config.strength_grid
        if val is None or not grid:
            self.estimator.fit(x, y)
            return
        x_val, y_val = self.features(val), self._target(val)
        best = None
        for strength in grid:
            estimator = self.make_estimator(seed, strength)
            estimator.fit(x, y)
            loss = self._validation_loss(estimator, x_val, y_val)
            if best is None or loss < best[0]:
                best = (loss, estimator)
        self.estimator = best[1]

    def _validation_loss(self, estimator, x_val, y_val) -> tuple[float, float]:
        """(minus balanced accuracy, log-loss) on validation; MSE for regression."""
        if self.task_kind == "regression":
            return (float(np.mean((estimator.predict(x_val) - y_val) ** 2)), 0.0)
        probabilities = np.full((len(x_val), self.n_classes), 1e-12)
        probabilities[:, estimator.classes_] = np.clip(estimator.predict_proba(x_val), 1e-12, 1)
        predicted = probabilities.argmax(axis=1)
        recalls = [np.mean(predicted[y_val == c] == c) for c in np.unique(y_val)]
        log_loss = float(-np.mean(np.log(probabilities[np.arange(len(y_val)), y_val])))
        return (-float(np.mean(recalls)), log_loss)

    def make_estimator(self, seed: int, strength: float | None = None):
        from sklearn.linear_model import LogisticRegression, Ridge
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        config = self.config
        if self.task_kind == "regression":
            final = Ridge(alpha=config.alpha if strength is None else 1.0 / strength)
        else:
            final = LogisticRegression(
                C=config.C if strength is None else strength,
                max_iter=config.max_iter,
                class_weight=config.class_weight,
                random_state=seed,
            )
        return Pipeline([("scaler", StandardScaler()), ("model", final)])

    def state(self) -> dict[str, torch.Tensor]:
        """``coef``, ``intercept``, ``scaler_mean``, ``scaler_scale`` (and ``classes``)."""
        if self.estimator is None:
            raise ConfigError(f"{self.name or 'logreg'} is not fitted: call fit first")
        scaler, final = self.estimator["scaler"], self.estimator["model"]
        out = {
            "coef": np.atleast_2d(final.coef_),
            "intercept": np.atleast_1d(final.intercept_),
            "scaler_mean": scaler.mean_,
            "scaler_scale": scaler.scale_,
        }
        if self.task_kind == "classification":
            out["classes"] = self.classes_seen()
        return {k: torch.as_tensor(np.ascontiguousarray(v)) for k, v in out.items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> LogisticModel:
        """Restore a fit from ``state()`` (no refit, no pickle)."""
        pipeline = self.make_estimator(seed=0)
        scaler, final = pipeline["scaler"], pipeline["model"]
        mean = state["scaler_mean"].numpy().astype(np.float64)
        scaler.mean_, scaler.scale_ = mean, state["scaler_scale"].numpy().astype(np.float64)
        scaler.var_, scaler.n_features_in_ = scaler.scale_**2, len(mean)
        scaler.n_samples_seen_ = 0
        coef, intercept = state["coef"].numpy(), state["intercept"].numpy()
        if self.task_kind == "regression":
            final.coef_, final.intercept_ = coef.reshape(-1), float(intercept.reshape(-1)[0])
        else:
            final.coef_, final.intercept_ = coef, intercept
            final.classes_ = state["classes"].numpy()
        final.n_features_in_ = len(mean)
        self.estimator = pipeline
        return self


class BoostingModel(SklearnModel):
    def make_estimator(self, seed: int):
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        config = self.config
        settings = {
            "max_iter": config.max_iter,
            "learning_rate": config.learning_rate,
            "max_depth": config.max_depth,
            "max_leaf_nodes": config.max_leaf_nodes,
            "min_samples_leaf": config.min_samples_leaf,
            "l2_regularization": config.l2_regularization,
            "early_stopping": False,
            "random_state": seed,
        }
        if self.task_kind == "regression":
            return HistGradientBoostingRegressor(**settings)
        return HistGradientBoostingClassifier(class_weight=config.class_weight, **settings)

    def _fit(self, x, y, val, seed) -> None:
        if self.config.early_stopping and val is not None and len(val) > 0:
            self.estimator.set_params(early_stopping=True)
            self.estimator.fit(x, y, X_val=self.features(val), y_val=self._target(val))
        else:
            self.estimator.fit(x, y)


# class-balanced: the leaderboards rank by balanced accuracy
_LOGREG = {"cpu": {"class_weight": "balanced"}, "paper": {"class_weight": "balanced"}}
_GBOOST = {
    "cpu": {"max_iter": 100, "min_samples_leaf": 10},
    "paper": {"max_iter": 500, "learning_rate": 0.05, "min_samples_leaf": 20},
}


@register(
    "logreg",
    config=LogregConfig,
    presets=_LOGREG,
    kind="sklearn",
    accepts=ACCEPTS,
    description="Standardised features -> logistic regression (Ridge for regression)",
)
def logreg(spec, task, modalities, config, prepare):
    return LogisticModel(spec, task, modalities, config, prepare)


@register(
    "gboost",
    config=GboostConfig,
    presets=_GBOOST,
    kind="sklearn",
    accepts=ACCEPTS,
    description="Histogram gradient boosting on flattened features",
)
def gboost(spec, task, modalities, config, prepare):
    return BoostingModel(spec, task, modalities, config, prepare)
