"""What every adfuse model is: a torch module over a ``Batch`` with a loss, stages and a config.

A model declares, as plain data:
- ``modalities``: the modalities it uses (a subset of what its family accepts and the cohort has);
- ``views()``: how each modality must be prepared (``adfuse.prepare`` views: volume, slice, roi...);
- ``stages()``: what trains when (frozen encoders, uni-modal pre-adaptation, LoRA), run by the engine;
- ``loss(batch, out)``: the full training loss (task loss plus its own auxiliary losses).

Rules every model keeps (tested over the registry in tests/models/test_all_models.py): the output
never depends on the content of an absent modality; any subset of its modalities may be absent for
any sample, down to one (or none, when it has a learned fallback), without error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import model_validator
from torch import nn

from adfuse.config import StrictModel

if TYPE_CHECKING:
    from adfuse.data.cohort import ModalitySpec
    from adfuse.prepare import Batch, PrepareConfig
    from adfuse.tasks import Task


class ModelConfig(StrictModel):
    """Base of every model's pydantic config (``paper`` and ``cpu`` presets are two instances).

    ``ABLATIONS`` names a model's ablations as the papers (and the issues) call them, each the
    config values it stands for: ``no_fnet=True`` or ``ablation="no_fnet"`` (a name or a list)
    is ``fnet=False``. A switch set to False is the default; a named ablation that contradicts
    an explicit value of the same key is an error. The stored config holds the real keys."""

    ABLATIONS: ClassVar[dict[str, dict[str, Any]]] = {}

    @model_validator(mode="before")
    @classmethod
    def _named_ablations(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not cls.ABLATIONS:
            return data
        data = dict(data)
        chosen = data.pop("ablation", None)
        names = [chosen] if isinstance(chosen, str) else list(chosen or [])
        for name in [n for n in cls.ABLATIONS if n in data]:
            if data.pop(name) not in (False, "false", "False", 0, None):
                names.append(name)
        for name in names:
            if name not in cls.ABLATIONS:
                known = ", ".join(sorted(cls.ABLATIONS))
                raise ValueError(f"unknown ablation {name!r}: choose from {known}")
            for key, value in cls.ABLATIONS[name].items():
                if key in data and data[key] != value:
                    raise ValueError(f"ablation {name!r} sets {key}={value!r}, not {data[key]!r}")
                data[key] = value
        return data


@dataclass(frozen=True)
class Stage:
    """One phase of training: which parameters train (name prefixes; empty = all), how long, lr."""

    name: str
    trainable: tuple[str, ...] = ()
    epochs: int | None = None  # None: the run's --epochs
    lr: float | None = None  # None: the run's learning rate
    weight_decay: float | None = None
    # (name prefix, factor): parameters that learn at factor x the stage's lr (e.g. a new head
    # beside a pretrained network); the first matching prefix counts
    lr_scale: tuple[tuple[str, float], ...] = ()

    def lr_factor(self, parameter_name: str) -> float:
        return next((f for prefix, f in self.lr_scale if parameter_name.startswith(prefix)), 1.0)

    def parameter_groups(self, model: nn.Module, lr: float) -> list[dict]:
        """The optimizer's parameter groups: ``model``'s trainable parameters by lr factor."""
        groups: dict[float, list] = {}
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                groups.setdefault(self.lr_factor(name), []).append(parameter)
        return [{"params": group, "lr": lr * factor} for factor, group in sorted(groups.items())]

    def applies_to(self, parameter_name: str) -> bool:
        return not self.trainable or parameter_name.startswith(self.trainable)


@dataclass
class ModelInfo:
    """Registry entry: the factory and what it tells about itself."""

    name: str
    factory: Any
    kind: str  # "torch" | "sklearn"
    paper: str = ""
    accepts: tuple[str, ...] = ()  # modalities the family can use ("*" = any)
    description: str = ""
    extra: dict = field(default_factory=dict)


def trainable_prefixes(module: nn.Module, prefix: str = "") -> tuple[str, ...]:
    """The fewest name prefixes covering exactly the parameters that require grad now
    (``()`` when all do, which a Stage reads as "everything")."""
    flags = [p.requires_grad for p in module.parameters()]
    if not prefix and all(flags):
        return ()
    if all(flags):
        return (prefix,)
    out: list[str] = []
    for name, parameter in module.named_parameters(recurse=False):
        if parameter.requires_grad:
            out.append(prefix + name)
    for name, child in module.named_children():
        if any(p.requires_grad for p in child.parameters()):
            out.extend(trainable_prefixes(child, f"{prefix}{name}."))
    return tuple(out)


class AdfuseModel(nn.Module):
    """Base class: subclasses implement ``forward(batch)``; the rest has sensible defaults."""

    name: str = ""

    def __init__(
        self,
        spec: dict[str, ModalitySpec],
        task: Task,
        modalities: list[str],
        config,
        prepare: PrepareConfig | None = None,
    ):
        from adfuse.prepare import PrepareConfig

        super().__init__()
        self.spec = spec
        self.prepare = prepare or PrepareConfig()
        self.task_kind = task.kind
        self.n_classes = len(task.classes) if task.kind == "classification" else 0
        self.modalities = list(modalities)
        self.config = config
        self.register_forward_pre_hook(_conform_inputs)

    @property
    def out_dim(self) -> int:
        return self.n_classes if self.task_kind == "classification" else 1

    def views(self) -> dict[str, str]:
        """modality -> prepare view; modalities not listed use prepare's default view."""
        return {}

    def input_shape(self, modality: str) -> tuple[int, ...]:
        """The per-sample shape of ``batch.inputs[modality]`` this model will receive."""
        from adfuse.prepare import input_shape

        return input_shape(self.spec[modality], self.views().get(modality), self.prepare)

    def prepare_config(self) -> PrepareConfig:
        """The PrepareConfig the engine must build this model's datasets with."""
        return self.prepare.model_copy(update={"views": {**self.prepare.views, **self.views()}})

    def stages(self) -> list[Stage]:
        """One stage; parameters frozen when the model was built (a frozen pretrained language
        model) stay frozen, since the engine sets ``requires_grad`` from the stage's prefixes."""
        return [Stage("train", trainable_prefixes(self))]

    def begin_stage(self, stage: Stage | None, fresh: bool = True) -> None:
        """Called by the engine before each stage and with ``None`` once training is over (the
        state every evaluation, reload and prediction uses); ``fresh`` is False when a killed
        stage resumes with its weights restored. A model whose forward or loss differs per stage
        (phases, rounds) switches here; one that must initialise stage parameters from earlier
        stages does so only when ``fresh``. Default: nothing."""

    def task_loss(self, batch: Batch, out: torch.Tensor) -> torch.Tensor:
        if self.task_kind == "classification":
            weight = getattr(self, "class_weight", None)
            return nn.functional.cross_entropy(out, batch.target, weight=weight)
        return nn.functional.mse_loss(out, batch.target.float())

    def loss(self, batch: Batch, out: torch.Tensor) -> torch.Tensor:
        return self.task_loss(batch, out)

    def auxiliary_losses(self) -> dict[str, float]:
        """The auxiliary terms of the last ``loss`` call, for logging (name -> value)."""
        return {}

    def epoch_order(
        self, epoch: int, present: dict[str, torch.Tensor], shuffled: torch.Tensor
    ) -> torch.Tensor:
        """The order of the training subjects in ``epoch`` (counted within its stage): the engine
        passes its seeded shuffle ``shuffled`` and the training split's modality masks
        ``present`` (``[n]`` per modality); a curriculum may reorder. Default: the shuffle."""
        return shuffled

    def format_output(self, out: torch.Tensor) -> torch.Tensor:
        """[B, 1] regression outputs become [B]."""
        return out.squeeze(-1) if self.task_kind == "regression" else out


def _conform_inputs(model: AdfuseModel, args: tuple) -> tuple | None:
    """Forward pre-hook: a batch prepared in other views than the model's (``prepare.dataset``
    with its defaults: volumes where ACMCA wants slices, R-GenIMA ROI crops) is re-prepared from
    its source dataset in the model's views, with the same fitted statistics. The engine always
    builds the model's own views, so there this only compares shapes."""
    from adfuse.errors import ConfigError

    batch = args[0] if args else None
    inputs = getattr(batch, "inputs", None)
    if not inputs:
        return None
    wrong = [
        m
        for m in model.modalities
        if m in inputs and tuple(inputs[m].shape[1:]) != tuple(model.input_shape(m))
    ]
    if not wrong:
        return None
    if batch.source is None:
        m = wrong[0]
        raise ConfigError(
            f"{model.name or type(model).__name__}: {m} input of shape "
            f"{list(inputs[m].shape[1:])}, expected {list(model.input_shape(m))} "
            f"(view '{model.views().get(m, 'default')}'); build the data with "
            "adfuse.prepare.dataset(..., config=model.prepare_config())"
        )
    dataset, indices = batch.source
    absent = {m: model.input_shape(m) for m in dataset.absent if m in model.spec}
    conformed = dataset.with_config(model.prepare_config(), absent).batch(indices)
    for m, here in batch.present.items():  # what the caller withheld stays withheld
        if m in conformed.present:
            keep = conformed.present[m] & here.cpu()
            shape = (-1,) + (1,) * (conformed.inputs[m].dim() - 1)
            conformed.inputs[m] = conformed.inputs[m] * keep.view(shape).to(
                conformed.inputs[m].dtype
            )
            conformed.present[m] = keep
    device = next(iter(inputs.values())).device
    return (conformed.to(device), *args[1:])
