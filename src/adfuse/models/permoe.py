"""PerM-MoE: Flexible Multimodal Neuroimaging Fusion for Alzheimer's Disease Progression Prediction
(Burns, Xue, Scharre & Ning, arXiv 2509.12234), built on Flex-MoE (``models/flexmoe.py``).

One router **per modality** instead of Flex-MoE's one shared router: each modality's tokens pick
their experts by their own gating network over the shared experts, so a modality seen alone is
routed as it was trained to be. Predicts the 2-year change in CDR-SB from T1, FLAIR, amyloid (Aβ)
PET and tau PET with the baseline CDR-SB as an input; also usable for the classification tasks.

Data flow, in this file's order:
1. a MONAI 3D ResNet per image modality (``models/encoders.py``) -> its feature-map cells as
   tokens, plus a learned modality embedding;
2. the missing-modality bank: the tokens of an absent modality m are a learned ``BP_m`` chosen by
   the set P of present modalities (``MissingModalityBank``: one row per P, shared with Flex-MoE);
3. pre-norm self-attention over all tokens, with the present modalities' tokens as keys (a bank
   token listens to what is there; nothing listens to the bank);
4. the sparse MoE feed-forward (``layers/moe.py``) with **one independent router per modality**,
   each routing its own modality's tokens over the shared experts; residual paths around both;
5. per-modality mean-pooled expert outputs (LayerNorm), **concatenated with the baseline CDR-SB**
   (the clinical modality's ``CDRSB`` column, z-scored on the training split; a learned value
   when the clinical row is absent) -> MLP -> ΔCDR-SB (or class logits). A subject without any of
   the four images is predicted from the baseline CDR-SB (and the bank) alone; a run without
   images (``--modalities clinical``) is an MLP on it.
6. loss = task loss + ``specialization_weight`` x expert-specialization loss (cross-entropy of
   every token's router logits toward expert ``c mod E``, c the number of the sample's image
   combination, 0 = all present, the empty one last) + ``balance_weight`` x load balancing.

Ablations (config switches, tested): ``shared_router=True`` (one router for every modality:
Flex-MoE-like routing), ``bank="zeros"`` / ``bank="random"`` (absent tokens are zeros / a fixed
N(0, 1) draw, not learned), ``no_specialization=True`` (balancing loss only).

| setting                   | paper                  | ``paper`` preset                  | ``cpu`` preset       |
|---------------------------|------------------------|-----------------------------------|----------------------|
| image encoders            | modality-specific CNNs | MONAI 3D ResNet-10, widths 64-512 | ResNet widths 8-64   |
| token width ``dim``       | n/s                    | 128 (Flex-MoE's)                  | 32                   |
| attention                 | self-attention, heads n/s | 1 layer, 4 heads               | 1 layer, 4 heads     |
| experts, top-k            | n/s                    | 16, 4 (Flex-MoE's)                | 16, 4                |
| expert MLP                | n/s                    | 128 -> 256 -> 128, GELU           | 32 -> 64 -> 32       |
| routers                   | one per modality       | one per modality, noisy top-k     | same                 |
| specialization / balancing weights | n/s           | 0.01 / 0.01 (Flex-MoE's)          | 0.01 / 0.01          |
| head                      | MLP on [pooled, CDR-SB] | hidden 128, dropout 0.1          | hidden 64, dropout 0.1 |
| seeds                     | 3                      | ``adfuse combinations`` default 5 | same                 |
| training                  | n/s                    | ``PAPER_TRAINING`` (Flex-MoE's)   | engine defaults      |

n/s: not stated in the paper summary we work from; we take Flex-MoE's values where it has one.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from adfuse.errors import ConfigError
from adfuse.models.encoders import make_encoder
from adfuse.models.flexmoe import PAPER_TRAINING as FLEXMOE_TRAINING
from adfuse.models.flexmoe import MissingModalityBank, MoEConfig, MoEFusionModel, presence_matrix
from adfuse.models.layers.cross_attention import CrossAttention
from adfuse.models.layers.moe import specialization_loss
from adfuse.models.registry import register

PAPER_TRAINING = dict(FLEXMOE_TRAINING)
IMAGES = ("t1", "flair", "amyloid", "tau")  # the paper's four; their subsets are the combinations


class PerMMoEConfig(MoEConfig):
    head_hidden: int = Field(64, ge=1)
    image_layers: tuple[int, int, int, int] = (1, 1, 1, 1)
    clinical_inputs: tuple[str, ...] = ("CDRSB",)  # clinical columns joined to the pooled experts
    specialization_weight: float = Field(0.01, ge=0)
    balance_weight: float = Field(0.01, ge=0)
    # ablations
    shared_router: bool = False
    bank: Literal["learned", "zeros", "random"] = "learned"
    no_specialization: bool = False


PRESETS = {
    "cpu": {"dim": 32, "expert_hidden": 64, "head_hidden": 64},
    "paper": {"dim": 128, "expert_hidden": 256, "head_hidden": 128, "size": "paper"},
}


class PerMMoE(MoEFusionModel):
    def __init__(self, spec, task, modalities, config: PerMMoEConfig, prepare=None):
        super().__init__(spec, task, modalities, config, prepare)
        dim = config.dim
        self.images = [m for m in self.modalities if m in IMAGES]
        self.baseline_columns = self._baseline_columns()
        self.encoders = nn.ModuleDict({m: self.make_encoder(m) for m in self.images})
        n_images = len(self.images)
        pooled_width = n_images * dim
        if n_images:
            token_counts = {self.encoders[m].n_tokens for m in self.images}
            if len(token_counts) != 1:
                raise ConfigError(f"permoe: the images give different token counts {token_counts}")
            self.n_tokens = token_counts.pop()
            self.modality_embedding = nn.Parameter(torch.zeros(n_images, dim))
            nn.init.trunc_normal_(self.modality_embedding, std=0.02)
            self.bank = MissingModalityBank(n_images, self.n_tokens, dim, config.bank)
            self.norm_attention = nn.LayerNorm(dim)
            self.attention = CrossAttention(dim, config.heads, config.dropout, keep_weights=False)
            self.norm_moe = nn.LayerNorm(dim)
            self.moe = self.make_moe(n_routers=1 if config.shared_router else n_images)
            self.norm_pooled = nn.LayerNorm(dim)
        else:
            self.n_tokens, self.moe = 0, None
        n_baseline = len(self.baseline_columns)
        if n_baseline:
            self.absent_baseline = nn.Parameter(torch.zeros(n_baseline))
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Sequential(
            nn.Linear(pooled_width + n_baseline, config.head_hidden),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.head_hidden, self.out_dim),
        )
        self._combination: torch.Tensor | None = None

    @property
    def routed_modalities(self) -> list[str]:
        return self.images

    def _baseline_columns(self) -> list[int]:
        """Positions of ``clinical_inputs`` in the prepared clinical vector (numeric columns come
        first, in the spec's order; see ``prepare.TabularScaler``)."""
        if "clinical" not in self.modalities:
            return []
        spec = self.spec["clinical"]
        numeric = [n for n in spec.feature_names if n not in spec.categories]
        missing = [c for c in self.config.clinical_inputs if c not in numeric]
        if missing:
            raise ConfigError(
                f"permoe: clinical column {missing[0]!r} is not a numeric clinical feature of "
                f"this dataset (set clinical_inputs)"
            )
        return [numeric.index(c) for c in self.config.clinical_inputs]

    # ------------------------------------------------------------------ 1. encoders
    def views(self) -> dict[str, str]:
        return {m: "volume" for m in self.images}

    def make_encoder(self, modality: str):
        config, shape = self.config, self.input_shape(modality)
        options = {"layers": config.image_layers, "dropout": config.dropout}
        return make_encoder(
            self.spec[modality], "volume", shape, config.dim, config.size, **options
        )

    # ------------------------------------------------------------------ 2-4. tokens, attention, MoE
    def experts_pooled(self, batch) -> torch.Tensor:
        """``[B, M * dim]``: each image modality's tokens after attention and its router's experts,
        mean-pooled (bank tokens where the modality is absent)."""
        present = presence_matrix(batch, self.images)
        self._combination = self.bank.combination(present)
        encoded = torch.stack(
            [self.encoders[m].encode(batch.inputs[m], batch.present[m]) for m in self.images], 1
        )
        tokens = self.bank.fill(encoded, present) + self.modality_embedding[None, :, None, :]
        n, n_images, n_tokens, dim = tokens.shape
        x = tokens.view(n, n_images * n_tokens, dim)
        visible = present.repeat_interleave(n_tokens, dim=1)  # keys: present modalities only
        normed = self.norm_attention(x)
        x = x + self.dropout(self.attention(normed, normed, visible))
        router = torch.arange(n_images, device=x.device).repeat_interleave(n_tokens)
        if self.config.shared_router:
            router = torch.zeros_like(router)
        x = x + self.dropout(self.moe(self.norm_moe(x), router.expand(n, -1)))
        return self.norm_pooled(x.view(n, n_images, n_tokens, dim).mean(dim=2)).flatten(1)

    # ------------------------------------------------------------------ 5. with baseline CDR-SB
    def baseline(self, batch) -> torch.Tensor:
        """``[B, C]``: the baseline clinical inputs (CDR-SB), the learned value where absent."""
        values = batch.inputs["clinical"][:, self.baseline_columns].to(self.absent_baseline.dtype)
        return torch.where(batch.present["clinical"][:, None], values, self.absent_baseline)

    def forward(self, batch) -> torch.Tensor:
        parts = []
        if self.images:
            parts.append(self.experts_pooled(batch))
        if self.baseline_columns:
            parts.append(self.baseline(batch))
        return self.format_output(self.head(torch.cat(parts, dim=1)))

    # ------------------------------------------------------------------ 6. auxiliary losses
    def router_losses(self, batch) -> dict[str, torch.Tensor]:
        if self.moe is None:
            return {}
        routing = self.moe.last_routing
        terms = {"balance": self.config.balance_weight * routing.balance}
        if not self.config.no_specialization:
            combination = self._combination.repeat_interleave(len(self.images) * self.n_tokens)
            expert = combination % self.config.experts
            loss = specialization_loss(routing.logits, expert)
            terms["specialization"] = self.config.specialization_weight * loss
        return terms


@register(
    "permoe",
    config=PerMMoEConfig,
    presets=PRESETS,
    paper="Burns et al., PerM-MoE, arXiv 2509.12234",
    accepts=("clinical", *IMAGES),
    description="PerM-MoE: per-modality routers over shared experts, missing-modality bank, + CDR-SB",
)
def permoe(spec, task, modalities, config, prepare):
    return PerMMoE(spec, task, modalities, config, prepare)
