"""SMMT: Sparse Multi-Modal Transformer with Masking (Lu & Tsai, arXiv 2512.14491).

1. Each modality is encoded to tokens of one shared width (a CNN's patch tokens for images, an MLP
   for clinical scores and SNPs, an embedding lookup for categorical fields); a cluster-based sparse
   self-attention layer (K-Means on the queries, k = ⌈log2 n⌉, attention within a cluster) mixes them.
2. Cascaded cross-attention fuses the modalities: modality i's tokens attend to the fused sequence
   of modalities 1..i-1, then join it.
3. Modality-wise masking x̃ = x ⊙ m, m ~ Bernoulli(1 − r), r = 0.3, on the fused features (training
   only), then an MLP head.

| setting                         | paper                      | ``paper`` preset      | ``cpu`` preset |
|---------------------------------|----------------------------|-----------------------|----------------|
| shared width ``dim``            | 512                        | 512                   | 32             |
| attention heads                 | not stated                 | 8                     | 4              |
| image encoder                   | CNN on 2D MRI slices       | ResNet-10 (64-512), slice | ResNet (8-64), slice |
| clinical / SNP encoder          | MLP (+ embedding lookup)   | MLP (hidden 512) -> 4 tokens, + 1 token per categorical field | same, hidden 64 |
| sparse self-attention layers    | not stated                 | 2 per modality        | 1 per modality |
| clusters k                      | ⌈log2 n⌉, K-Means on queries | ⌈log2 n⌉, 3 Lloyd steps | same       |
| clustered from n tokens         | always                     | always (``crossover=0``) | always      |
| masking ratio r                 | 0.3                        | 0.3                   | 0.3            |
| head hidden, dropout            | MLP, not stated            | 512, 0.1              | 64, 0.1        |
| training                        | Adam, lr 1e-3, batch 8, 50 epochs | ``PAPER_TRAINING`` | (engine defaults) |
| evaluation                      | 20-100 % of train × 5 seeds | ``adfuse.sweep.sweep_fractions`` (its defaults) | same |

Ablations are config switches: ``attention="dense"`` (no clustering), ``masking=False``, any
``mask_ratio``; by name also ``dense=True``, ``no_mask=True`` or ``ablation="no_mask"``. ``crossover=None`` uses the layer's measured ``CROSSOVER`` (dense attention below
it, which is faster there but no longer restricts attention to clusters).

Our reading where the paper is silent: the cascade follows ``modalities`` order; the fused tokens
of each modality are mean-pooled, masked, concatenated (zeros for an absent modality) for the head;
the masking has no 1/(1 − r) rescaling (as x̃ = x ⊙ m), the head's LayerNorm absorbs the scale.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from adfuse.data.layout import MODALITIES
from adfuse.models.baselines import BaselineConfig, EncodedModel
from adfuse.models.encoders import TokenEncoder, VectorEncoder
from adfuse.models.layers.cluster_attention import (
    CROSSOVER,
    KMEANS_ITERATIONS,
    ClusterAttentionBlock,
)
from adfuse.models.layers.cross_attention import CrossAttentionBlock
from adfuse.models.layers.heads import MLPHead
from adfuse.models.registry import register

# The paper's optimiser and schedule, for ``TrainConfig.build(model="smmt", **PAPER_TRAINING)``:
# the engine's AdamW without weight decay is Adam; patience 50 lets all 50 epochs run.
PAPER_TRAINING = {"lr": 1e-3, "batch_size": 8, "epochs": 50, "weight_decay": 0.0, "patience": 50}


class SMMTConfig(BaselineConfig):
    heads: int = 4
    self_attention_layers: int = Field(1, ge=1)
    vector_tokens: int = Field(4, ge=1)  # tokens an MLP cuts clinical scores and SNPs into
    attention: Literal["cluster", "dense"] = "cluster"
    n_clusters: int | None = Field(None, ge=1)  # None: k = ⌈log2 n⌉ (SMMT §III.B)
    kmeans_iterations: int = Field(KMEANS_ITERATIONS, ge=0)
    crossover: int | None = Field(0, ge=0)  # clustered from this length; None: CROSSOVER
    masking: bool = True
    mask_ratio: float = Field(0.3, ge=0, lt=1)  # masking ratio r, SMMT §III.C

    ABLATIONS: ClassVar[dict[str, dict[str, Any]]] = {  # the names for the switches
        "dense": {"attention": "dense"},
        "no_mask": {"masking": False},
    }


PRESETS = {
    "cpu": {"dim": 32, "hidden": 64, "heads": 4, "size": "cpu", "volume_view": "slice"},
    "paper": {
        "dim": 512,
        "hidden": 512,
        "heads": 8,
        "size": "paper",
        "volume_view": "slice",
        "self_attention_layers": 2,
    },
}


# ----------------------------------------------------------------------------- 1. encoders
class TabularEncoder(TokenEncoder):
    """Clinical scores (or SNPs) -> an MLP -> ``tokens`` tokens; each categorical field (a one-hot
    block after the numeric columns, see ``prepare.TabularScaler``) -> one token by embedding
    lookup of its category (row 0 of a field: missing or unseen)."""

    def __init__(self, spec, input_shape, dim: int, hidden: int, tokens: int, dropout: float):
        fields = [len(values) for values in spec.categories.values()]
        n_numeric = input_shape[0] - sum(fields)
        numeric_tokens = min(tokens, n_numeric)
        super().__init__(numeric_tokens + len(fields), dim)
        self.n_numeric, self.fields = n_numeric, fields
        self.scores = (
            VectorEncoder((n_numeric,), dim, hidden, numeric_tokens, dropout) if n_numeric else None
        )
        self.categories = nn.Embedding(sum(n + 1 for n in fields), dim) if fields else None
        first_row = torch.tensor([0] + [n + 1 for n in fields[:-1]], dtype=torch.long).cumsum(0)
        self.register_buffer("first_row", first_row[: len(fields)], persistent=False)

    def category_rows(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, fields]``: the embedding row of each field's category (its one-hot block)."""
        rows, start = [], self.n_numeric
        for n in self.fields:
            block = x[:, start : start + n]
            rows.append(torch.where(block.amax(dim=1) > 0, block.argmax(dim=1) + 1, 0))
            start += n
        return torch.stack(rows, dim=1) + self.first_row

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [] if self.scores is None else [self.scores(x[:, : self.n_numeric])]
        if self.categories is not None:
            parts.append(self.categories(self.category_rows(x)))
        return torch.cat(parts, dim=1)


# ----------------------------------------------------------------------------- 3. masking
class ModalityMasking(nn.Module):
    """x̃ = x ⊙ m, m ~ Bernoulli(1 − r) element-wise, in training only (SMMT §III.C)."""

    def __init__(self, ratio: float):
        super().__init__()
        self.ratio = ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.ratio <= 0:
            return x
        return x * (torch.rand_like(x) >= self.ratio).to(x.dtype)


class SMMT(EncodedModel):
    def __init__(self, spec, task, modalities, config, prepare=None):
        super().__init__(spec, task, modalities, config, prepare)
        dim = config.dim
        self.modality_embedding = nn.Parameter(torch.zeros(len(self.modalities), dim))
        attention = {
            "n_clusters": config.n_clusters,
            "iterations": config.kmeans_iterations,
            "mode": "dense" if config.attention == "dense" else "auto",
            "crossover": CROSSOVER if config.crossover is None else config.crossover,
        }
        self.self_attention = nn.ModuleDict(
            {
                m: nn.ModuleList(
                    ClusterAttentionBlock(dim, config.heads, config.dropout, **attention)
                    for _ in range(config.self_attention_layers)
                )
                for m in self.modalities
            }
        )
        self.fusion = nn.ModuleDict(
            {m: CrossAttentionBlock(dim, config.heads, config.dropout) for m in self.modalities[1:]}
        )
        self.masking = ModalityMasking(config.mask_ratio if config.masking else 0.0)
        self.head = MLPHead(dim * len(self.modalities), config.hidden, self.out_dim, config.dropout)

    def make_encoder(self, modality: str) -> TokenEncoder:
        spec, config = self.spec[modality], self.config
        if spec.kind not in ("tabular", "genotype"):
            return super().make_encoder(modality)
        shape = self.input_shape(modality)
        return TabularEncoder(
            spec, shape, config.dim, config.hidden, config.vector_tokens, config.dropout
        )

    # 1. encoders and sparse self-attention, per modality
    def encode(self, batch, position: int) -> torch.Tensor:
        """``[B, T, dim]``: the modality's tokens after its sparse self-attention (zeros where it
        is absent; only present samples are computed)."""
        modality = self.modalities[position]
        present = batch.present[modality]
        tokens = self.encoders[modality].encode(batch.inputs[modality], present)
        index = present.nonzero().squeeze(1)
        if len(index) == 0:
            return tokens
        x = tokens[index] + self.modality_embedding[position]
        for block in self.self_attention[modality]:
            x = block(x)
        return tokens.index_copy(0, index, x)

    # 2. cascaded cross-attention fusion
    def fuse(self, tokens: list[torch.Tensor], present: list[torch.Tensor]) -> list[torch.Tensor]:
        """Modality i's tokens attend to the fused tokens of modalities 1..i-1 (absent ones hidden)
        and join them; returns each modality's fused tokens."""
        fused = [tokens[0]]
        visible = [present[0][:, None].expand(-1, tokens[0].shape[1])]
        for modality, x, here in zip(self.modalities[1:], tokens[1:], present[1:], strict=True):
            sequence, mask = torch.cat(fused, dim=1), torch.cat(visible, dim=1)
            fused.append(self.fusion[modality](x, sequence, mask))
            visible.append(here[:, None].expand(-1, x.shape[1]))
        return fused

    def forward(self, batch) -> torch.Tensor:
        tokens = [self.encode(batch, i) for i in range(len(self.modalities))]
        present = [batch.present[m] for m in self.modalities]
        fused = self.fuse(tokens, present)
        pooled = torch.stack(
            [
                x.mean(dim=1) * here[:, None].to(x.dtype)
                for x, here in zip(fused, present, strict=True)
            ],
            dim=1,
        )  # [B, M, dim], zeros for an absent modality
        # 3. modality-wise masking of the fused features, then the head
        features = self.masking(pooled)
        return self.format_output(self.head(features.flatten(1)))


@register(
    "smmt",
    config=SMMTConfig,
    presets=PRESETS,
    paper="Lu & Tsai, Sparse Multi-Modal Transformer with Masking for AD classification, "
    "arXiv 2512.14491",
    accepts=tuple(m for m in MODALITIES if m != "notes"),
    description="Cluster-sparse self-attention per modality, cascaded cross-attention, masking",
)
def smmt(spec, task, modalities, config, prepare):
    return SMMT(spec, task, modalities, config, prepare)
