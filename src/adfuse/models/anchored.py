"""Anchored adaptation of uni-modal foundation models (Joint Adaptation of Uni-modal Foundation
Models for Multi-modal AD Diagnosis, ICLR 2026; no public code).

1. Phase 1, uni-modal adaptation: each foundation encoder (``models/foundation.py``: sMRI ViT,
   fMRI window transformer, clinical text language model, genetics gene-token transformer) with a
   linear head, fine-tuned by cross-entropy on the samples that have it.
2. Phase 2, one round per anchor m̂: the other encoders (frozen, phase-1 weights, LoRA off) give
   F_m(X_m); a modality-aware Q-former turns them into H_a (per auxiliary modality Z_m = Linear(F_m)
   to the anchor width, N_q uni-modal queries cross-attend over Z_m -> X̂_m; N_q cross-modal queries
   cross-attend over Concat(X̂_m) -> X̂_c; H_a = Concat(X̂_m..., X̂_c), |M'|·N_q + N_q tokens), which
   is appended to the anchor's input tokens; the anchor encoder is frozen except its peft LoRA
   adapters and its head (the frozen phase-1 head plus a zero-initialised trainable correction,
   i.e. the head fine-tuned from its phase-1 weights); cross-entropy on the samples with the anchor.
3. Aggregation: the mean of the rounds' probabilities (the paper), or weighted by each round's
   confidence (its max probability; the paper's suggested improvement).

Missing modalities (the paper leaves them open): an absent auxiliary modality drops its N_q
queries from H_a (attention-masked; the cross-modal queries see only present ones, and are dropped
when no auxiliary modality is present); an absent anchor skips its round in the aggregation; a
sample with no modality gets a learned constant. Clinical fields go, written as text, with the notes
into the text encoder (one "text" modality, present when either is).

| setting                | paper                          | ``paper`` preset             | ``cpu`` preset              |
|------------------------|--------------------------------|------------------------------|-----------------------------|
| sMRI encoder           | BrainMVP (pre-trained)         | ViT width 768, depth 12, 16^3 patches | ViT width 64, depth 2, 8^3 patches |
| fMRI encoder           | Brain-JEPA                     | window transformer, 768 x 12 | 64 x 2, windows of 10       |
| text encoder           | LLaMA-2 (13B)                  | bundled MiniLM, all 6 layers | bundled MiniLM, first 2 layers |
| genetics encoder       | Nucleotide Transformer         | gene tokens, 768 x 12        | gene tokens, 64 x 2         |
| pre-training           | the foundation models'         | ``adfuse pretrain`` (masked tokens) or a local HF path | same |
| queries N_q            | 16 (uni-modal and cross-modal) | 16                           | 4                           |
| Q-former               | cross-attention, n/s           | one cross-attention block per query set, 8 heads | same, 4 heads |
| LoRA                   | yes, rank n/s                  | rank 8, alpha 16, q/v (qkv)  | rank 4, alpha 8             |
| phase 1 / phase 2      | CE / CE, optimiser n/s         | engine's AdamW, run epochs per stage | same       |
| aggregation            | mean of the 4 rounds           | mean                         | mean                        |

n/s: not stated in the paper summary. Ablations (config switches): ``queries`` 0..16 (0: the anchor
sees no auxiliary token, the rounds are uni-modal and their mean is late fusion);
``interaction="concat" | "linear" | "attention"`` (output-level fusion of the anchor's pooled
feature with the pooled Q-former outputs, instead of input-level anchoring);
``adaptation="frozen"`` (no LoRA) or ``"full"`` (the anchor's whole encoder, a copy of its phase-1
weights made when its round starts, so the other rounds still see phase-1 features);
``aggregation="confidence"``. Pre-trained encoders: ``smri_encoder`` / ``fmri_encoder`` /
``genetics_encoder`` = a folder written by ``adfuse pretrain``.
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from adfuse.config import LocalPath
from adfuse.errors import ConfigError
from adfuse.models.base import AdfuseModel, ModelConfig, Stage, trainable_prefixes
from adfuse.models.foundation import (
    GROUPS,
    EncoderConfig,
    FoundationEncoder,
    adapters_enabled,
    add_lora,
    build_encoder,
    gene_token_groups,
    is_lora,
    load_encoder,
)
from adfuse.models.layers.cross_attention import CrossAttentionBlock
from adfuse.models.registry import register

FINAL = "final"
PHASE1 = "unimodal"


class AnchoredConfig(ModelConfig):
    width: int = Field(64, ge=8)  # sMRI / fMRI / genetics transformer width
    depth: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(2.0, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    patch: int = Field(8, ge=1)
    window: int = Field(10, ge=1)
    snps_per_token: int = Field(32, ge=1)
    text_model: LocalPath | None = (
        None  # local HF folder; None: the run's prepare.text_model (MiniLM)
    )
    text_layers: int | None = Field(2, ge=1)  # None: every layer
    text_trainable: bool = True
    genetics_model: LocalPath | None = None  # a local HF (DNA) model as the genetics backbone
    genetics_layers: int | None = Field(None, ge=1)
    smri_encoder: LocalPath | None = None  # folders written by `adfuse pretrain`
    fmri_encoder: LocalPath | None = None
    genetics_encoder: LocalPath | None = None
    queries: int = Field(4, ge=0, le=64)  # N_q per query set (paper: 16)
    qformer_heads: int = Field(4, ge=1)
    interaction: Literal["input", "concat", "linear", "attention"] = "input"
    adaptation: Literal["lora", "frozen", "full"] = "lora"
    lora_rank: int = Field(4, ge=1)
    lora_alpha: float = Field(8.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    aggregation: Literal["mean", "confidence"] = "mean"
    phase1_epochs: int | None = Field(None, ge=1)  # None: the run's --epochs
    round_epochs: int | None = Field(None, ge=1)
    round_lr: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> AnchoredConfig:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not a multiple of heads {self.heads}")
        return self


PRESETS = {
    "cpu": {"width": 64, "depth": 2, "heads": 4, "patch": 8, "queries": 4, "text_layers": 1},
    "paper": {
        "width": 768,
        "depth": 12,
        "heads": 12,
        "mlp_ratio": 4.0,
        "patch": 16,
        "queries": 16,
        "qformer_heads": 8,
        "text_layers": None,
        "lora_rank": 8,
        "lora_alpha": 16.0,
    },
}


# ----------------------------------------------------------------------------- the Q-former
class ModalityAwareQFormer(nn.Module):
    """H_a = Concat(X̂_m for m in M', X̂_c): uni-modal queries per auxiliary modality over
    Z_m = Linear(F_m(X_m)), then cross-modal queries over Concat(X̂_m)."""

    def __init__(self, widths: dict[str, int], width: int, queries: int, heads: int, dropout):
        super().__init__()
        if width % heads:
            raise ConfigError(f"anchored: anchor width {width} is not a multiple of {heads} heads")
        self.queries = queries
        self.projections = nn.ModuleDict({m: nn.Linear(w, width) for m, w in widths.items()})
        self.unimodal_queries = nn.ParameterDict(
            {m: nn.Parameter(torch.randn(queries, width) * 0.02) for m in widths}
        )
        self.unimodal = nn.ModuleDict(
            {m: CrossAttentionBlock(width, heads, dropout) for m in widths}
        )
        self.crossmodal_queries = nn.Parameter(torch.randn(queries, width) * 0.02)
        self.crossmodal = CrossAttentionBlock(width, heads, dropout)

    def forward(self, features: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
        """``features[m] = (states [B, T, W_m], mask [B, T], present [B])`` -> (H_a, mask)."""
        parts, masks = [], []
        for m, (states, mask, here) in features.items():
            n = len(states)
            z = self.projections[m](states)  # Z_m
            x = self.unimodal[m](self.unimodal_queries[m].repeat(n, 1, 1), z, mask)  # X̂_m
            parts.append(torch.where(here[:, None, None], x, torch.zeros_like(x)))
            masks.append(here[:, None].expand(-1, self.queries))
        joint, joint_mask = torch.cat(parts, dim=1), torch.cat(masks, dim=1)
        n = len(joint)
        cross = self.crossmodal(self.crossmodal_queries.repeat(n, 1, 1), joint, joint_mask)
        anything = joint_mask.any(dim=1)
        parts.append(torch.where(anything[:, None, None], cross, torch.zeros_like(cross)))
        masks.append(anything[:, None].expand(-1, self.queries))
        return torch.cat(parts, dim=1), torch.cat(masks, dim=1)


# ----------------------------------------------------------------------------- the model
class Anchored(AdfuseModel):
    def __init__(self, spec, task, modalities, config, prepare=None):
        super().__init__(spec, task, modalities, config, prepare)
        self.groups = [g for g, members in GROUPS.items() if set(members) & set(modalities)]
        self.encoders = nn.ModuleDict({g: self.make_encoder(g) for g in self.groups})
        width = {g: self.encoders[g].width for g in self.groups}
        self.heads = nn.ModuleDict({g: nn.Linear(width[g], self.out_dim) for g in self.groups})
        if config.adaptation == "lora":
            for encoder in self.encoders.values():
                add_lora(encoder, config.lora_rank, config.lora_alpha, config.lora_dropout)
        if config.adaptation == "full":
            self.anchor_copies = nn.ModuleDict(
                {g: copy.deepcopy(e) for g, e in self.encoders.items()}
            )
        auxiliary = {g: [m for m in self.groups if m != g] for g in self.groups}
        self.auxiliary = auxiliary
        if config.queries and len(self.groups) > 1:
            self.qformers = nn.ModuleDict(
                {
                    g: ModalityAwareQFormer(
                        {m: width[m] for m in auxiliary[g]},
                        width[g],
                        config.queries,
                        config.qformer_heads,
                        config.dropout,
                    )
                    for g in self.groups
                }
            )
        fused = self._fused_width(width)
        self.round_heads = nn.ModuleDict(
            {g: nn.Linear(fused[g], self.out_dim) for g in self.groups}
        )
        for head in self.round_heads.values():  # phase-1 head + 0: rounds start from phase 1
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        if self._output_fusion():
            if config.interaction == "linear":
                self.fusion = nn.ParameterDict(
                    {g: nn.Parameter(torch.zeros(len(auxiliary[g]) + 2)) for g in self.groups}
                )
            elif config.interaction == "attention":
                from monai.networks.blocks import TransformerBlock

                self.fusion = nn.ModuleDict(
                    {
                        g: TransformerBlock(width[g], 2 * width[g], config.qformer_heads, 0.0)
                        for g in self.groups
                    }
                )
                for block in self.fusion.values():
                    block.norm_cross_attn = nn.Identity()
        self.absent_output = nn.Parameter(torch.zeros(self.out_dim))
        self.mode = FINAL
        self._feature_cache: dict = {}
        self._inference_cache: dict | None = None  # phase-1 features while ``inference_cache``
        # frozen when built (a frozen language model): never trained by any stage
        self.frozen = frozenset(n for n, p in self.named_parameters() if not p.requires_grad)

    # ---------------------------------------------------------------- construction helpers
    def views(self) -> dict[str, str]:
        return {m: v for m, v in (("t1", "volume"), ("fmri", "series")) if m in self.modalities}

    def make_encoder(self, group: str) -> FoundationEncoder:
        config = self.config
        saved = getattr(config, f"{group}_encoder", None)
        members = [m for m in GROUPS[group] if m in self.modalities]
        if saved is not None:
            return load_encoder(saved, group, self.input_shape(members[0]))
        common = {
            "width": config.width,
            "depth": config.depth,
            "heads": config.heads,
            "mlp_ratio": config.mlp_ratio,
            "dropout": config.dropout,
        }
        if group == "text":
            path = config.text_model or self.prepare.text_model
            encoder_config = EncoderConfig(
                group="text",
                path=path,
                layers=config.text_layers,
                trainable=config.text_trainable,
                **common,
            )
            clinical = "clinical" in members
            return build_encoder(
                encoder_config,
                self.spec["clinical"] if clinical else None,
                self.input_shape("clinical")[0] if clinical else 0,
            )
        shape = self.input_shape(members[0])
        extra = {}
        if group == "genetics":
            extra = {
                "token_groups": gene_token_groups(self.spec["genotype"], config.snps_per_token),
                "path": config.genetics_model,
                "layers": config.genetics_layers,
            }
        return build_encoder(
            EncoderConfig(
                group=group,
                input_shape=shape,
                patch=config.patch,
                window=config.window,
                **common,
                **extra,
            )
        )

    def _output_fusion(self) -> bool:
        return self.config.interaction != "input" and hasattr(self, "qformers")

    def _fused_width(self, width: dict[str, int]) -> dict[str, int]:
        if self.config.interaction == "concat" and self.config.queries and len(self.groups) > 1:
            return {g: width[g] * (len(self.auxiliary[g]) + 2) for g in self.groups}
        return width

    # ---------------------------------------------------------------- stages
    def stages(self) -> list[Stage]:
        config = self.config
        phase1 = [
            n
            for n, _ in self.named_parameters()
            if n.startswith(("encoders.", "heads.")) and not is_lora(n) and n not in self.frozen
        ]
        stages = [Stage(PHASE1, self._prefixes(phase1), epochs=config.phase1_epochs)]
        for group in self.groups:
            stages.append(
                Stage(
                    f"anchor_{group}",
                    self._prefixes(self.round_parameters(group)),
                    epochs=config.round_epochs,
                    lr=config.round_lr,
                )
            )
        return stages

    def round_parameters(self, group: str) -> list[str]:
        """Names of what trains in ``group``'s round: the anchor's LoRA (or its whole copy with
        ``adaptation="full"``), its Q-former, its head correction and output-level fusion."""
        own = (f"qformers.{group}.", f"round_heads.{group}.", f"fusion.{group}")
        names = []
        for name, _ in self.named_parameters():
            if name.startswith(own):
                names.append(name)
            elif name.startswith(f"encoders.{group}.") and is_lora(name):
                names.append(name)
            elif name.startswith(f"anchor_copies.{group}.") and name not in self.frozen:
                names.append(name)
        return names

    def _prefixes(self, names: list[str]) -> tuple[str, ...]:
        chosen = set(names)
        flags = {n: p.requires_grad for n, p in self.named_parameters()}
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(name in chosen)
        try:
            return trainable_prefixes(self)
        finally:
            for name, parameter in self.named_parameters():
                parameter.requires_grad_(flags[name])

    def begin_stage(self, stage: Stage | None, fresh: bool = True) -> None:
        """The engine's hook: phase 1, a round (its anchor copy starts from phase 1), or final."""
        self.mode = FINAL if stage is None else stage.name
        group = self._round_group()
        if group is None or not fresh:
            # phase 1 changes the encoders; a resumed round may follow a checkpoint load. From
            # one round to the next the auxiliary features stay valid: phase-1 weights, LoRA off
            self._feature_cache = {}
        if fresh and group is not None and hasattr(self, "anchor_copies"):
            self.anchor_copies[group].load_state_dict(self.encoders[group].state_dict())
        self.train(self.training)

    def _round_group(self) -> str | None:
        return self.mode.removeprefix("anchor_") if self.mode.startswith("anchor_") else None

    def train(self, mode: bool = True) -> Anchored:
        super().train(mode)
        anchor = self._round_group()
        if mode and anchor is not None:  # frozen auxiliary encoders: no dropout
            for group, encoder in self.encoders.items():
                if group != anchor or self.config.adaptation == "full":
                    encoder.eval()
        return self

    # ---------------------------------------------------------------- forward
    def _inputs(self, batch, group):
        members = [m for m in GROUPS[group] if m in self.modalities]
        return {m: batch.inputs[m] for m in members}, {m: batch.present[m] for m in members}

    def group_present(self, batch, group: str) -> torch.Tensor:
        return self.encoders[group].present(self._inputs(batch, group)[1])

    @contextmanager
    def inference_cache(self):
        """Inside: with no gradient and in eval mode, phase-1 features are computed once per
        subject and availability of the group's modalities, and reused (``evaluate_patterns``
        runs each subject under up to 2^M - 1 patterns; the weights do not change inside)."""
        self._inference_cache = {}
        try:
            yield
        finally:
            self._inference_cache = None

    def features(self, batch, group: str):
        """Phase-1 features F_m(X_m) (LoRA off): states, mask (all False where absent), present.

        During a round, an auxiliary encoder is frozen and in eval mode, so its features are a
        fixed function of the subject's inputs: they are computed once per subject (and
        availability pattern) and reused for the rest of the stage and by the rounds after it
        (every round sees the same phase-1 weights with LoRA off). Each subject is encoded on
        its own: CPU kernels round differently with the batch size, and a batch-dependent value
        would make a round resumed after a kill (its cache refilled from other batches) differ
        from an uninterrupted one."""
        anchor = self._round_group()
        frozen_auxiliary = anchor is not None and group != anchor
        inferring = self._inference_cache is not None and not (
            self.training or torch.is_grad_enabled()
        )
        if not (frozen_auxiliary or inferring):
            return self._compute_features(batch, group)
        cache = self._feature_cache if frozen_auxiliary else self._inference_cache
        inputs, present = self._inputs(batch, group)
        here = self.encoders[group].present(present)
        pattern = torch.stack(list(present.values()), dim=1).tolist()
        keys = [(group, sid, tuple(row)) for sid, row in zip(batch.ids, pattern, strict=True)]
        missing = [i for i, key in enumerate(keys) if here[i] and key not in cache]
        for i in missing:
            with torch.no_grad():
                states, mask, _ = self._compute_features(batch.select([i]), group)
            length = int(mask[0].nonzero().max()) + 1
            cache[keys[i]] = (states[0, :length], mask[0, :length])
        rows = [cache[key] if here[i] else None for i, key in enumerate(keys)]
        length = max((r[0].shape[0] for r in rows if r is not None), default=1)
        width = self.encoders[group].width
        reference = self.absent_output
        states = reference.new_zeros((len(keys), length, width))
        mask = torch.zeros(len(keys), length, dtype=torch.bool, device=reference.device)
        for i, row in enumerate(rows):
            if row is not None:
                states[i, : row[0].shape[0]] = row[0]
                mask[i, : row[1].shape[0]] = row[1]
        return states, mask, here

    def _compute_features(self, batch, group: str):
        encoder = self.encoders[group]
        inputs, present = self._inputs(batch, group)
        here = encoder.present(present)
        index = here.nonzero().squeeze(1)
        if len(index) == 0:
            dtype = next(encoder.parameters()).dtype
            states = torch.zeros(len(here), 1, encoder.width, dtype=dtype, device=here.device)
            return states, torch.zeros(len(here), 1, dtype=torch.bool, device=here.device), here
        sub = {m: x[index] for m, x in inputs.items()}, {m: p[index] for m, p in present.items()}
        states, mask = encoder(*sub)
        full = states.new_zeros((len(here), *states.shape[1:])).index_copy(0, index, states)
        full_mask = mask.new_zeros((len(here), mask.shape[1])).index_copy(0, index, mask)
        return full, full_mask, here

    def anchor_round(self, batch, group: str, features: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Round ``group``: (indices of the samples with the anchor, their outputs);
        ``features`` holds the auxiliary modalities' phase-1 features."""
        index = self.group_present(batch, group).nonzero().squeeze(1)
        if len(index) == 0:
            return index, self.absent_output.new_zeros((0, self.out_dim))
        auxiliary = {m: tuple(t[index] for t in features[m]) for m in self.auxiliary[group]}
        extra = extra_mask = None
        if hasattr(self, "qformers"):
            extra, extra_mask = self.qformers[group](auxiliary)  # H_a
        inputs, present = self._inputs(batch, group)
        inputs = {m: x[index] for m, x in inputs.items()}
        present = {m: p[index] for m, p in present.items()}
        encoder = (
            self.anchor_copies[group] if hasattr(self, "anchor_copies") else self.encoders[group]
        )
        lora = self.config.adaptation == "lora"
        with adapters_enabled(encoder, lora):
            if self.config.interaction == "input":
                states, mask = encoder(inputs, present, extra, extra_mask)
            else:
                states, mask = encoder(inputs, present)
        pooled = encoder.pool(states, mask)
        fused = self._output_fuse(group, pooled, extra, extra_mask)
        return index, self.heads[group](pooled) + self.round_heads[group](fused)

    def _output_fuse(self, group, pooled, extra, extra_mask) -> torch.Tensor:
        """Output-level fusion ablations: the anchor's pooled feature with the pooled Q-former
        outputs (one per auxiliary modality, one cross-modal); input-level returns ``pooled``."""
        if not self._output_fusion():
            return pooled
        n_sets = extra.shape[1] // self.config.queries
        sets = extra.view(len(extra), n_sets, self.config.queries, -1).mean(dim=2)
        valid = extra_mask.view(len(extra), n_sets, -1)[:, :, 0]
        sets = sets * valid[..., None].to(sets.dtype)
        tokens = torch.cat([pooled[:, None], sets], dim=1)  # [B, 1 + |M'| + 1, W]
        mask = torch.cat([valid.new_ones((len(valid), 1)), valid], dim=1)
        interaction = self.config.interaction
        if interaction == "concat":
            return tokens.flatten(1)
        if interaction == "linear":
            weights = self.fusion[group].masked_fill(~mask, float("-inf")).softmax(dim=1)
            return (weights[..., None] * tokens).sum(dim=1)
        return self.fusion[group](tokens, attn_mask=mask)[:, 0]

    def forward(self, batch) -> torch.Tensor:
        anchor = self._round_group()
        needed = self.groups if anchor is None else self.auxiliary[anchor]
        features = {g: self.features(batch, g) for g in needed}
        outputs = {}
        if self.mode == PHASE1:
            for g in self.groups:
                states, mask, here = features[g]
                index = here.nonzero().squeeze(1)
                pooled = self.encoders[g].pool(states[index], mask[index])
                outputs[g] = (index, self.heads[g](pooled))
        else:
            for g in self.groups if anchor is None else [anchor]:
                outputs[g] = self.anchor_round(batch, g, features)
        self._outputs = outputs
        return self.format_output(self.aggregate(outputs, len(batch)))

    def aggregate(self, outputs: dict, n: int) -> torch.Tensor:
        """Mean (or confidence-weighted mean) of the probabilities of the rounds a sample has,
        returned as log-probabilities (regression: the mean prediction)."""
        classification = self.task_kind == "classification"
        dtype = self.absent_output.dtype
        total = self.absent_output.new_zeros((n, self.out_dim))
        weight = self.absent_output.new_zeros((n, 1))
        for index, out in outputs.values():
            value = out.softmax(dim=1) if classification else out
            w = torch.ones(len(out), 1, dtype=dtype, device=out.device)
            if classification and self.config.aggregation == "confidence":
                w = value.amax(dim=1, keepdim=True)
            total = total.index_add(0, index, w * value)
            weight = weight.index_add(0, index, w)
        mean = total / weight.clamp(min=1e-12)
        if classification:
            mean = mean.clamp(min=1e-12).log()
        return torch.where(weight > 0, mean, self.absent_output)

    # ---------------------------------------------------------------- loss
    def loss(self, batch, out: torch.Tensor) -> torch.Tensor:
        if self.mode == FINAL:
            return self.task_loss(batch, out)
        losses = []
        for index, logits in self._outputs.values():
            if len(index):
                target = batch.target[index]
                losses.append(self.task_loss_on(logits, target))
        if not losses:  # no sample has the anchor: a zero that keeps the graph
            return sum(p.sum() * 0 for p in self.parameters() if p.requires_grad)
        return torch.stack(losses).mean()

    def task_loss_on(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.task_kind == "classification":
            return nn.functional.cross_entropy(
                out, target, weight=getattr(self, "class_weight", None)
            )
        return nn.functional.mse_loss(out.squeeze(-1), target.float())

    # ---------------------------------------------------------------- efficiency
    def efficiency_report(self, batch) -> dict:
        """Per stage: trainable parameters and parameters taking part; per round and for the full
        rotating inference (every round + aggregation): FLOPs and seconds per subject."""
        from torch.utils.flop_counter import FlopCounterMode

        mode, training = self.mode, self.training
        named = dict(self.named_parameters())
        total = sum(p.numel() for p in named.values())
        report: dict = {"parameters_total": total, "stages": {}}
        self._feature_cache = {}
        try:
            self.eval()
            for stage in self.stages():
                self.mode = stage.name
                trainable = sum(p.numel() for n, p in named.items() if stage.applies_to(n))
                with torch.no_grad(), FlopCounterMode(display=False) as counter:
                    started = time.perf_counter()
                    self(batch)
                    seconds = time.perf_counter() - started
                report["stages"][stage.name] = {
                    "parameters_trainable": trainable,
                    "trainable_share": trainable / total,
                    "flops_per_subject": counter.get_total_flops() / len(batch),
                    "seconds_per_subject": seconds / len(batch),
                }
            self.mode = FINAL
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                started = time.perf_counter()
                self(batch)
                seconds = time.perf_counter() - started
            report["rotating_inference"] = {
                "rounds": len(self.groups),
                "flops_per_subject": counter.get_total_flops() / len(batch),
                "seconds_per_subject": seconds / len(batch),
            }
        finally:
            self.mode, self._feature_cache = mode, {}
            self.train(training)
        return report


@register(
    "anchored",
    config=AnchoredConfig,
    presets=PRESETS,
    paper="Joint Adaptation of Uni-modal Foundation Models for Multi-modal Alzheimer's Disease "
    "Diagnosis, ICLR 2026",
    accepts=("t1", "fmri", "notes", "clinical", "genotype"),
    description="Uni-modal foundation encoders, rotating anchor with a modality-aware Q-former "
    "and LoRA, aggregated rounds",
)
def anchored(spec, task, modalities, config, prepare):
    return Anchored(spec, task, modalities, config, prepare)
