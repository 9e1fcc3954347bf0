"""3MT: Cascaded Multi-Modal Mixing Transformer (Liu et al., NeuroImage 2023; arXiv 2210.00255).

Our reading of the paper (no official code is public); SMMT builds on it and compares against it.

1. Each modality is encoded to tokens (the shared encoders of ``models/encoders.py``).
2. A set of learned queries passes through one cross-attention block per modality, in turn (the
   cascade): at step i the queries attend to modality i's tokens. A sample without modality i keeps
   its queries unchanged at that step (its keys are all masked, and the step is skipped for it).
3. Training: modality dropout withholds present modalities at random; an auxiliary head per
   modality predicts the target from the queries right after that modality's step, and its loss
   (over the samples that have the modality) is added to the task loss with ``aux_weight``.

| setting                       | paper (as we read it)         | ``paper`` preset | ``cpu`` preset |
|-------------------------------|-------------------------------|------------------|----------------|
| token width ``dim``           | not stated here               | 256              | 32             |
| learned queries               | not stated here               | 16               | 4              |
| cross-attention blocks / step | 1 (our reading)               | 1                | 1              |
| heads                         | not stated here               | 8                | 4              |
| image encoder                 | 3D CNN                        | ResNet-10 (64-512) | ResNet (8-64) |
| modality dropout              | yes (rate not stated here)    | 0.2              | 0.2            |
| auxiliary heads, loss weight  | one per modality, not stated  | 0.3              | 0.3            |
| head hidden, dropout          | MLP                           | 256, 0.1         | 64, 0.1        |
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from adfuse.data.layout import MODALITIES
from adfuse.models.baselines import BaselineConfig, EncodedModel
from adfuse.models.layers.cross_attention import CrossAttentionBlock
from adfuse.models.layers.heads import MLPHead
from adfuse.models.registry import register


class ThreeMTConfig(BaselineConfig):
    heads: int = 4
    queries: int = Field(4, ge=1)
    blocks_per_step: int = Field(1, ge=1)
    aux_weight: float = Field(0.3, ge=0)  # weight of the auxiliary heads' losses


PRESETS = {
    "cpu": {"dim": 32, "hidden": 64, "heads": 4, "queries": 4, "size": "cpu"},
    "paper": {"dim": 256, "hidden": 256, "heads": 8, "queries": 16, "size": "paper"},
}
PRESETS = {
    name: {**values, "modality_dropout": 0.2, "dropout": 0.1} for name, values in PRESETS.items()
}


class CascadeStep(nn.Module):
    """The queries attend to one modality's tokens (``blocks`` cross-attention blocks); samples
    without the modality keep their queries."""

    def __init__(self, dim: int, heads: int, dropout: float, blocks: int):
        super().__init__()
        self.blocks = nn.ModuleList(CrossAttentionBlock(dim, heads, dropout) for _ in range(blocks))

    def forward(self, queries, tokens, present) -> torch.Tensor:
        key_mask = present[:, None].expand(-1, tokens.shape[1])
        updated = queries
        for block in self.blocks:
            updated = block(updated, tokens, key_mask)
        return torch.where(present[:, None, None], updated, queries)


class ThreeMT(EncodedModel):
    def __init__(self, spec, task, modalities, config, prepare=None):
        super().__init__(spec, task, modalities, config, prepare)
        dim = config.dim
        self.queries = nn.Parameter(
            nn.init.trunc_normal_(torch.empty(config.queries, dim), std=0.02)
        )
        self.steps = nn.ModuleDict(
            {
                m: CascadeStep(dim, config.heads, config.dropout, config.blocks_per_step)
                for m in self.modalities
            }
        )
        self.aux_heads = nn.ModuleDict(
            {m: MLPHead(dim, config.hidden, self.out_dim, config.dropout) for m in self.modalities}
        )
        self.head = MLPHead(dim, config.hidden, self.out_dim, config.dropout)
        self.auxiliary_outputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._auxiliary_ids: list[str] | None = None
        self._auxiliary_values: dict[str, float] = {}

    def cascade(self, batch) -> list[torch.Tensor]:
        """The query states ``[B, Q, dim]``: the learned queries, then after each modality's step
        (in ``modalities`` order)."""
        states = [self.queries.expand(len(batch), -1, -1)]
        for modality in self.modalities:
            present = batch.present[modality]
            tokens = self.encoders[modality].encode(batch.inputs[modality], present)
            states.append(self.steps[modality](states[-1], tokens, present))
        return states

    def forward(self, batch) -> torch.Tensor:
        batch = self.drop_modalities(batch)
        states = self.cascade(batch)
        self.auxiliary_outputs = {
            m: (self.format_output(self.aux_heads[m](state.mean(dim=1))), batch.present[m])
            for m, state in zip(self.modalities, states[1:], strict=True)
        }
        self._auxiliary_ids = list(batch.ids)
        return self.format_output(self.head(states[-1].mean(dim=1)))

    def loss(self, batch, out: torch.Tensor) -> torch.Tensor:
        """Task loss + ``aux_weight`` × the auxiliary heads' losses of the last forward on this
        batch (each over the samples that had its modality)."""
        if self._auxiliary_ids != list(batch.ids):
            self(batch)
        total = self.task_loss(batch, out)
        self._auxiliary_values = {}
        for modality, (aux_out, present) in self.auxiliary_outputs.items():
            if not present.any():
                continue
            aux_loss = self._supervised_loss(aux_out[present], batch.target[present])
            self._auxiliary_values[modality] = aux_loss.item()
            total = total + self.config.aux_weight * aux_loss
        return total

    def _supervised_loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.task_kind == "classification":
            return nn.functional.cross_entropy(
                out, target, weight=getattr(self, "class_weight", None)
            )
        return nn.functional.mse_loss(out, target.float())

    def auxiliary_losses(self) -> dict[str, float]:
        return dict(self._auxiliary_values)


@register(
    "3mt",
    config=ThreeMTConfig,
    presets=PRESETS,
    paper="Liu et al., Cascaded Multi-Modal Mixing Transformers for AD classification with "
    "incomplete data, NeuroImage 2023 (arXiv 2210.00255); our reading, no official code",
    accepts=tuple(m for m in MODALITIES if m != "notes"),
    description="Learned queries cross-attend to each modality in a cascade; aux heads; dropout",
)
def three_mt(spec, task, modalities, config, prepare):
    return ThreeMT(spec, task, modalities, config, prepare)
