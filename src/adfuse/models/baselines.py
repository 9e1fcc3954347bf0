"""Neural baselines every paper compares against: one modality, early fusion, late fusion.

Each modality goes through its encoder (``models/encoders.py``) to tokens, mean-pooled to one vector.

- ``unimodal``: one modality -> encoder -> MLP head; a sample without it gets a learned constant.
- ``early_fusion``: every modality's pooled vector, a learned "absent" vector in the slot of a
  missing one -> concatenation -> MLP head.
- ``late_fusion``: an encoder and a head per modality; the output is the mean of the heads'
  logits (classification) or predictions (regression) over the modalities the sample has; a
  sample with none gets a learned constant.

| setting            | paper preset             | cpu preset                  |
|--------------------|--------------------------|-----------------------------|
| token width ``dim``| 256                      | 32                          |
| head hidden        | 256                      | 64                          |
| encoders (size)    | ResNet-10 widths 64-512  | ResNet widths 8-64          |
| dropout            | 0.1                      | 0.3                         |
| modality dropout   | 0.2 (fusion models)      | 0.2 (fusion models)         |
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from adfuse.models.base import AdfuseModel, ModelConfig
from adfuse.models.encoders import TokenEncoder, make_encoder
from adfuse.models.layers.heads import MLPHead
from adfuse.models.registry import register


class BaselineConfig(ModelConfig):
    dim: int = 32
    hidden: int = 64
    size: Literal["cpu", "paper"] = "cpu"
    dropout: float = 0.1
    volume_view: Literal["volume", "slice", "roi", "regions"] = "volume"
    timeseries_view: Literal["series", "connectivity"] = "series"
    text_trainable: bool = False
    # Training only: each present modality of a sample is withheld with this probability (one is
    # always kept), so the fused model cannot lean on one modality and copes with absent ones.
    modality_dropout: float = Field(0.0, ge=0, lt=1)


class UnimodalConfig(BaselineConfig):
    modality: str | None = None  # used when several modalities are given


PRESETS = {
    "cpu": {"dim": 32, "hidden": 64, "size": "cpu", "dropout": 0.3},
    "paper": {"dim": 256, "hidden": 256, "size": "paper"},
}
FUSION_PRESETS = {name: {**values, "modality_dropout": 0.2} for name, values in PRESETS.items()}


class EncodedModel(AdfuseModel):
    """A model with one token encoder per modality, in ``self.encoders`` (views from the config)."""

    def __init__(self, spec, task, modalities, config, prepare=None):
        super().__init__(spec, task, modalities, config, prepare)
        self.encoders = nn.ModuleDict({m: self.make_encoder(m) for m in self.modalities})

    def views(self) -> dict[str, str]:
        chosen = {"volume": self.config.volume_view, "timeseries": self.config.timeseries_view}
        return {
            m: chosen[self.spec[m].kind] for m in self.modalities if self.spec[m].kind in chosen
        }

    def make_encoder(self, modality: str) -> TokenEncoder:
        spec, config = self.spec[modality], self.config
        options = {"dropout": config.dropout}
        if spec.kind == "text":
            options |= {"path": self.prepare.text_model, "trainable": config.text_trainable}
        view = self.views().get(modality)
        shape = self.input_shape(modality)
        return make_encoder(spec, view, shape, config.dim, config.size, **options)

    def drop_modalities(self, batch):
        """In training, withhold each present modality with ``config.modality_dropout``."""
        rate = self.config.modality_dropout
        if not self.training or rate <= 0 or len(self.modalities) < 2:
            return batch
        present = torch.stack([batch.present[m] for m in self.modalities], dim=1)
        keep = present & (torch.rand(present.shape, device=present.device) >= rate)
        emptied = present.any(dim=1) & ~keep.any(dim=1)
        rescue = (torch.rand(present.shape, device=present.device) * present).argmax(dim=1)
        keep[emptied, rescue[emptied]] = True
        withheld = {m: keep[:, i] for i, m in enumerate(self.modalities)}
        inputs = {
            m: x if m not in withheld else x * _broadcast(withheld[m], x).to(x.dtype)
            for m, x in batch.inputs.items()
        }
        present = {m: withheld.get(m, p) for m, p in batch.present.items()}
        return type(batch)(inputs, present, batch.target, batch.ids, batch.extras)

    def pooled(self, batch, modality: str) -> torch.Tensor:
        """``[B, dim]``: the modality's pooled tokens (zeros where it is absent)."""
        encoder = self.encoders[modality]
        return encoder.encode_pooled(batch.inputs[modality], batch.present[modality])


class Unimodal(EncodedModel):
    def __init__(self, spec, task, modalities, config, prepare=None):
        if len(modalities) == 1:
            chosen = modalities[0]
        else:
            chosen = config.modality if config.modality in modalities else modalities[0]
        super().__init__(spec, task, [chosen], config, prepare)
        self.head = MLPHead(config.dim, config.hidden, self.out_dim, config.dropout)
        self.absent_output = nn.Parameter(torch.zeros(self.out_dim))

    def forward(self, batch) -> torch.Tensor:
        modality = self.modalities[0]
        out = self.head(self.pooled(batch, modality))
        out = torch.where(batch.present[modality].unsqueeze(1), out, self.absent_output)
        return self.format_output(out)


class EarlyFusion(EncodedModel):
    def __init__(self, spec, task, modalities, config, prepare=None):
        super().__init__(spec, task, modalities, config, prepare)
        self.absent = nn.ParameterDict(
            {m: nn.Parameter(torch.zeros(config.dim)) for m in self.modalities}
        )
        width = config.dim * len(self.modalities)
        self.head = MLPHead(width, config.hidden, self.out_dim, config.dropout)

    def forward(self, batch) -> torch.Tensor:
        batch = self.drop_modalities(batch)
        slots = [
            torch.where(batch.present[m].unsqueeze(1), self.pooled(batch, m), self.absent[m])
            for m in self.modalities
        ]
        return self.format_output(self.head(torch.cat(slots, dim=1)))


class LateFusion(EncodedModel):
    def __init__(self, spec, task, modalities, config, prepare=None):
        super().__init__(spec, task, modalities, config, prepare)
        self.heads = nn.ModuleDict(
            {
                m: MLPHead(config.dim, config.hidden, self.out_dim, config.dropout)
                for m in modalities
            }
        )
        self.absent_output = nn.Parameter(torch.zeros(self.out_dim))

    def forward(self, batch) -> torch.Tensor:
        batch = self.drop_modalities(batch)
        total, count = 0.0, 0
        for m in self.modalities:
            here = batch.present[m].unsqueeze(1)
            out = self.heads[m](self.pooled(batch, m))
            total = total + torch.where(here, out, torch.zeros_like(out))
            count = count + here.to(out.dtype)
        mean = total / count.clamp(min=1.0)
        return self.format_output(torch.where(count > 0, mean, self.absent_output))


@register(
    "unimodal",
    config=UnimodalConfig,
    presets=PRESETS,
    description="One modality: encoder -> MLP head (a learned constant when it is absent)",
)
def unimodal(spec, task, modalities, config, prepare):
    return Unimodal(spec, task, modalities, config, prepare)


@register(
    "early_fusion",
    config=BaselineConfig,
    presets=FUSION_PRESETS,
    description="Concatenated pooled embeddings (a learned vector for an absent modality) -> MLP",
)
def early_fusion(spec, task, modalities, config, prepare):
    return EarlyFusion(spec, task, modalities, config, prepare)


@register(
    "late_fusion",
    config=BaselineConfig,
    presets=FUSION_PRESETS,
    description="A head per modality; outputs averaged over the modalities present",
)
def late_fusion(spec, task, modalities, config, prepare):
    return LateFusion(spec, task, modalities, config, prepare)


def _broadcast(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.reshape(-1, *([1] * (like.dim() - 1)))
