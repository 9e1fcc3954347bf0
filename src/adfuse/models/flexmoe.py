"""Flex-MoE: Modeling Arbitrary Modality Combination via the Flexible Mixture-of-Experts
(Yun et al., NeurIPS 2024), as coded at commit 8c82735 of UNITES-Lab/flex-moe.

Every modality becomes ``patches`` tokens; the tokens of an absent modality come from a learned
**missing-modality bank** indexed by the subject's observed-modality combination; one transformer
layer mixes all tokens, its feed-forward a sparse MoE with **one shared noisy top-k router** whose
loss pushes each incomplete subject's tokens toward the expert numbered by its combination.

Data flow, in this file's order:
1. tokens: a vector (clinical scores, SNPs, FreeSurfer) is zero-padded, cut into ``patches`` equal
   chunks and each chunk mapped by one shared linear layer to ``dim``; an image goes through a small
   3D CNN (MONAI ResNet, ``models/encoders.py``) to one ``dim``-vector, cut and mapped the same way.
2. the bank: a learned tensor ``[2^M, M, patches, dim]``, N(0, 1) at start; row ``c`` (the
   combination of observed modalities, 0 = all) fills the tokens of every absent modality.
3. a learned position embedding over all ``M x patches`` tokens; one pre-norm transformer layer:
   multi-head attention over all tokens, then the sparse MoE feed-forward (``layers/moe.py``) applied
   to every modality's tokens with the one shared router, each with a residual path.
4. mean-pool per modality, concatenate, one linear layer.
5. loss = task loss + ``router_weight`` x router loss; router loss = cross-entropy of the router
   logits of every incomplete subject's tokens toward expert ``c mod E`` + load balancing.
6. the first ``warmup_epochs`` epochs present the training subjects sorted by their number of
   modalities, most first (``epoch_order``, a hook of the engine); later epochs are shuffled.

Known defects of that code, none of which this file has (each tested in tests/models/test_flexmoe.py):
- a subject without any of the selected modalities got combination -1 and crashed the loss: here
  the empty combination is the bank's last row (hence ``2^M`` rows, not ``2^M - 1``) and its expert
  is ``(2^M - 1) mod E``;
- a single-modality run crashed (the bank existed only for >= 2 modalities): the bank always exists;
- the attention output was added to itself (``x = x + dropout(x)``), not to its input: here
  ``x = x + dropout(attention(norm(x)))``;
- imputation, scaling and image statistics were fitted on all subjects before the split: here
  ``adfuse.prepare`` fits scalers on the training split only and normalises each image on its own;
- missing values in every column were filled with the first column's mean: ``TabularScaler`` fills
  each column with its own training mean;
- subject order depended on the process hash seed (``list(set(ids))``): splits are sorted and
  every epoch's order derives from the run seed;
- the router loss accumulated during evaluation leaked into the next training step and its logs:
  the router loss is recomputed per forward, enters ``loss`` in training only, and
  ``auxiliary_losses()`` averages training batches only.

| setting                    | Flex-MoE code (8c82735)      | ``paper`` preset     | ``cpu`` preset   |
|----------------------------|------------------------------|----------------------|------------------|
| token width ``dim``        | 128                          | 128                  | 32               |
| tokens per modality        | 16                           | 16                   | 16               |
| image encoder              | 3D CNN 32-32-64-64-128-128 -> 128 | MONAI ResNet widths 32-64-128-128 | ResNet 8-64 |
| attention heads            | 4                            | 4                    | 4                |
| transformer layers         | 1 (sparse FFN)               | 1                    | 1                |
| experts, top-k             | 16, 4                        | 16, 4                | 16, 4            |
| expert MLP                 | 128 -> 256 -> 128, GELU      | 128 -> 256 -> 128    | 32 -> 64 -> 32   |
| router                     | one, noisy top-k             | one, noisy           | one, noisy       |
| expert capacity            | none (fastmoe)               | none                 | none             |
| dropout                    | 0.5                          | 0.5                  | 0.1              |
| router loss weight         | 0.01                         | 0.01                 | 0.01             |
| sorted warm-up epochs      | 5                            | 5                    | 5                |
| training (run options)     | Adam 1e-4, batch 8, 50 epochs, best by validation | ``PAPER_TRAINING`` | engine defaults |

Our reading where the code is ambiguous: the MoE runs once over all modalities' tokens (the code
called it per modality; per-token routing is the same, the balancing loss is over all tokens);
combinations are numbered largest first (0 = all observed), then in ``itertools.combinations``
order, the empty one last; with more than ``E`` combinations, expert ``c mod E`` is designated.
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from adfuse.models.base import AdfuseModel, ModelConfig
from adfuse.models.encoders import TokenEncoder, make_encoder
from adfuse.models.layers.cross_attention import CrossAttention
from adfuse.models.layers.moe import SparseMoE, specialization_loss
from adfuse.models.registry import register

# Flex-MoE's optimiser and schedule, for ``TrainConfig.build(model="flexmoe", **PAPER_TRAINING)``:
# the engine's AdamW without weight decay is Adam; patience 50 lets all 50 epochs run.
PAPER_TRAINING = {"lr": 1e-4, "batch_size": 8, "epochs": 50, "weight_decay": 0.0, "patience": 50}
ACCEPTS = ("clinical", "genotype", "freesurfer", "t1", "flair", "amyloid", "tau", "fdg")


class MoEConfig(ModelConfig):
    """The fields Flex-MoE and PerM-MoE share: token width, attention and the sparse MoE."""

    dim: int = Field(32, ge=4)
    heads: int = Field(4, ge=1)
    experts: int = Field(16, ge=1)
    top_k: int = Field(4, ge=1)
    expert_hidden: int = Field(64, ge=1)
    noisy: bool = True
    capacity_factor: float | None = Field(None, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    size: Literal["cpu", "paper"] = "cpu"  # image encoder widths (models/encoders.py)

    @model_validator(mode="after")
    def _consistent(self) -> MoEConfig:
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not a multiple of heads {self.heads}")
        if self.top_k > self.experts:
            raise ValueError(f"top_k {self.top_k} exceeds experts {self.experts}")
        return self


class FlexMoEConfig(MoEConfig):
    patches: int = Field(16, ge=1)  # tokens per modality
    router_weight: float = Field(0.01, ge=0)
    warmup_epochs: int = Field(5, ge=0)
    image_widths: tuple[int, int, int, int] | None = None  # None: the size's widths


PRESETS = {
    "cpu": {"dim": 32, "expert_hidden": 64, "dropout": 0.1},
    "paper": {
        "dim": 128,
        "expert_hidden": 256,
        "dropout": 0.5,
        "size": "paper",
        "image_widths": (32, 64, 128, 128),
    },
}


# ----------------------------------------------------------------------------- combinations
def modality_combinations(n_modalities: int) -> list[tuple[int, ...]]:
    """Every subset of ``range(n)``, numbered: all first, larger before smaller, empty last."""
    positions = range(n_modalities)
    return [
        c for size in range(n_modalities, -1, -1) for c in itertools.combinations(positions, size)
    ]


def combination_table(n_modalities: int) -> torch.Tensor:
    """``[2^M]``: the combination number of each presence bit mask (bit m = modality m present)."""
    table = torch.empty(2**n_modalities, dtype=torch.long)
    for number, combination in enumerate(modality_combinations(n_modalities)):
        table[sum(1 << m for m in combination)] = number
    return table


def presence_matrix(batch, modalities: list[str]) -> torch.Tensor:
    """``[B, M]`` bool: which of ``modalities`` each sample has."""
    return torch.stack([batch.present[m].bool() for m in modalities], dim=1)


class MissingModalityBank(nn.Module):
    """Tokens for absent modalities, one set per (observed combination, modality).

    ``init="learned"``: a parameter ``[2^M, M, T, D]`` drawn from N(0, 1) (Flex-MoE's bank);
    ``"random"``: the same draw, fixed (a buffer, never trained); ``"zeros"``: zeros.
    """

    def __init__(self, n_modalities: int, tokens: int, dim: int, init: str = "learned"):
        super().__init__()
        shape = (2**n_modalities, n_modalities, tokens, dim)
        self.init = init
        self.register_buffer("table", combination_table(n_modalities), persistent=False)
        if init == "learned":
            self.bank = nn.Parameter(torch.randn(shape))
        elif init == "random":
            generator = torch.Generator().manual_seed(0)
            self.register_buffer("bank", torch.randn(shape, generator=generator))
        elif init == "zeros":
            self.register_buffer("bank", torch.zeros(shape))
        else:
            raise ValueError(f"bank init {init!r}: choose learned, random or zeros")

    def combination(self, present: torch.Tensor) -> torch.Tensor:
        """``present [B, M]`` -> the combination number of each sample ``[B]``."""
        bits = 1 << torch.arange(present.shape[1], device=present.device)
        return self.table[(present.long() * bits).sum(dim=1)]

    def fill(self, tokens: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """``tokens [B, M, T, D]`` with every absent modality's tokens taken from the bank row of
        the sample's combination (the bank is always read, so it always has a gradient)."""
        rows = self.bank.index_select(0, self.combination(present)).to(tokens.dtype)
        return torch.where(present[:, :, None, None], tokens, rows)


class MoEFusionModel(AdfuseModel, ABC):
    """What Flex-MoE and PerM-MoE share: routing losses that act in training only, and their
    logging averaged over the training batches (never the evaluation ones)."""

    def __init__(self, spec, task, modalities, config, prepare=None):
        super().__init__(spec, task, modalities, config, prepare)
        self._aux_sums: dict[str, float] = {}
        self._aux_batches = 0

    def make_moe(self, n_routers: int) -> SparseMoE:
        config = self.config
        return SparseMoE(
            config.dim,
            config.expert_hidden,
            config.experts,
            config.top_k,
            noisy=config.noisy,
            n_routers=n_routers,
            capacity_factor=config.capacity_factor,
        )

    @abstractmethod
    def router_losses(self, batch) -> dict[str, torch.Tensor]:
        """Name -> weighted auxiliary term of the last forward (implemented by each model)."""

    def loss(self, batch, out: torch.Tensor) -> torch.Tensor:
        task_loss = self.task_loss(batch, out)
        if not self.training:  # validation: the task loss alone, and nothing is logged
            return task_loss
        terms = self.router_losses(batch)
        for name, value in terms.items():
            self._aux_sums[name] = self._aux_sums.get(name, 0.0) + float(value.detach())
        self._aux_batches += 1
        return task_loss + sum(terms.values(), task_loss.new_zeros(()))

    def auxiliary_losses(self) -> dict[str, float]:
        """Mean weighted auxiliary terms over the training batches since the last call."""
        batches = max(self._aux_batches, 1)
        means = {name: total / batches for name, total in self._aux_sums.items()}
        self._aux_sums, self._aux_batches = {}, 0
        return means

    def expert_usage(self, batch) -> torch.Tensor:
        """``[B, M, E]``: per sample and modality, the share of its tokens' kept top-k
        assignments that went to each expert (runs a forward pass)."""
        self(batch)
        routing = self.moe.last_routing
        n_experts = self.moe.n_experts
        onehot = torch.zeros(*routing.indices.shape, n_experts, device=routing.indices.device)
        onehot.scatter_(2, routing.indices.unsqueeze(2), 1.0)
        onehot = onehot * routing.kept.unsqueeze(2)
        counts = onehot.sum(dim=1).view(len(batch.ids), len(self.routed_modalities), -1, n_experts)
        counts = counts.sum(dim=2)
        return counts / counts.sum(dim=2, keepdim=True).clamp(min=1)

    @property
    def routed_modalities(self) -> list[str]:
        """The modalities whose tokens go through the MoE, in token order."""
        return self.modalities


# ----------------------------------------------------------------------------- 1. tokens
class PatchTokens(TokenEncoder):
    """A vector -> zero-padded to ``patches`` equal chunks -> one shared linear layer -> tokens;
    with a ``backbone`` (an image encoder), the image is first pooled to one ``dim``-vector."""

    def __init__(self, n_features: int, patches: int, dim: int, backbone: TokenEncoder | None):
        super().__init__(patches, dim)
        self.backbone = backbone
        self.patch_size = math.ceil(n_features / patches)
        self.padding = self.patch_size * patches - n_features
        self.projection = nn.Linear(self.patch_size, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backbone is not None:
            x = self.backbone.pool(self.backbone(x))
        x = nn.functional.pad(x.to(self.projection.weight.dtype), (0, self.padding))
        return self.projection(x.view(len(x), self.n_tokens, self.patch_size))


class FlexMoE(MoEFusionModel):
    def __init__(self, spec, task, modalities, config: FlexMoEConfig, prepare=None):
        super().__init__(spec, task, modalities, config, prepare)
        dim, patches, n_modalities = config.dim, config.patches, len(self.modalities)
        self.encoders = nn.ModuleDict({m: self.make_encoder(m) for m in self.modalities})
        self.bank = MissingModalityBank(n_modalities, patches, dim)
        self.position = nn.Parameter(torch.zeros(n_modalities * patches, dim))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.norm_attention = nn.LayerNorm(dim)
        self.attention = CrossAttention(dim, config.heads, config.dropout, keep_weights=False)
        self.norm_moe = nn.LayerNorm(dim)
        self.moe = self.make_moe(n_routers=1)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(n_modalities * dim, self.out_dim)
        self._combination: torch.Tensor | None = None

    # ------------------------------------------------------------------ 1. tokens
    def views(self) -> dict[str, str]:
        return {m: "volume" for m in self.modalities if self.spec[m].kind == "volume"}

    def make_encoder(self, modality: str) -> PatchTokens:
        spec, config = self.spec[modality], self.config
        shape = self.input_shape(modality)
        if spec.kind != "volume":
            return PatchTokens(shape[0], config.patches, config.dim, None)
        options = {"widths": config.image_widths} if config.image_widths else {}
        backbone = make_encoder(spec, "volume", shape, config.dim, config.size, **options)
        return PatchTokens(config.dim, config.patches, config.dim, backbone)

    def tokens(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, M, patches, dim]`` tokens (bank-filled where absent) and the presence ``[B, M]``."""
        present = presence_matrix(batch, self.modalities)
        encoded = torch.stack(
            [self.encoders[m].encode(batch.inputs[m], batch.present[m]) for m in self.modalities],
            dim=1,
        )
        return self.bank.fill(encoded, present), present

    # ------------------------------------------------------------------ 3. the transformer layer
    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, M * patches, dim]``: attention then the sparse MoE, each with a residual path."""
        normed = self.norm_attention(x)
        x = x + self.dropout(self.attention(normed, normed))
        return x + self.dropout(self.moe(self.norm_moe(x)))

    def forward(self, batch) -> torch.Tensor:
        tokens, present = self.tokens(batch)
        self._combination = self.bank.combination(present)
        n, n_modalities, patches, dim = tokens.shape
        x = self.mix(tokens.view(n, n_modalities * patches, dim) + self.position)
        pooled = x.view(n, n_modalities, patches, dim).mean(dim=2)  # 4. per modality
        return self.format_output(self.head(self.dropout(pooled.flatten(1))))

    # ------------------------------------------------------------------ 5. the router loss
    def router_losses(self, batch) -> dict[str, torch.Tensor]:
        routing = self.moe.last_routing
        tokens_per_sample = len(self.modalities) * self.config.patches
        combination = self._combination.repeat_interleave(tokens_per_sample)
        incomplete = combination != 0
        expert = combination % self.config.experts
        router_loss = specialization_loss(routing.logits, expert, incomplete)
        weight = self.config.router_weight
        return {"router_expert": weight * router_loss, "router_balance": weight * routing.balance}

    # ------------------------------------------------------------------ 6. sorted warm-up
    def epoch_order(self, epoch: int, present, shuffled: torch.Tensor) -> torch.Tensor:
        """In the first ``warmup_epochs`` epochs: subjects with more modalities first (ties in the
        seeded shuffle's order); afterwards the shuffle."""
        if epoch >= self.config.warmup_epochs:
            return shuffled
        count = torch.stack([present[m].bool() for m in self.modalities], 1).sum(1)[shuffled]
        return shuffled[torch.argsort(count, descending=True, stable=True)]


@register(
    "flexmoe",
    config=FlexMoEConfig,
    presets=PRESETS,
    paper="Yun et al., Flex-MoE, NeurIPS 2024 (code UNITES-Lab/flex-moe 8c82735)",
    accepts=ACCEPTS,
    description="Flex-MoE: missing-modality bank, one transformer layer with a shared-router sparse MoE",
)
def flexmoe(spec, task, modalities, config, prepare):
    return FlexMoE(spec, task, modalities, config, prepare)
