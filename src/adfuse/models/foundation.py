"""Anchor-capable uni-modal "foundation" encoders: each a transformer over a token sequence that
accepts extra tokens at its input (what input-level anchoring needs, see ``models/anchored.py``).

| group      | modalities        | tokens                                          | transformer (backbone)        |
|------------|-------------------|-------------------------------------------------|-------------------------------|
| ``smri``   | t1 (volume view)  | 3D patches (MONAI ``PatchEmbeddingBlock``)       | MONAI ``TransformerBlock`` s (a ViT) |
| ``fmri``   | fmri (series)     | windows of ``window`` time points x all ROIs     | MONAI ``TransformerBlock`` s  |
| ``genetics``| genotype         | one token per gene (``spec.groups``), else chunks of SNPs | MONAI blocks, or a local HF model (``inputs_embeds``) |
| ``text``   | notes + clinical  | note word pieces; each clinical field as a name token and a value token | a local HF model (default: the bundled pretrained MiniLM) |

Clinical fields are written as text in the language model's embedding space: the name token of
a field is the mean embedding of its readable name's word pieces ("MMSE score"), a categorical
value is the embedding of its category's words ("Female"), a numeric value (z-scored by
``prepare``) is a "number" embedding scaled by the value (xVal, Golkar et al. 2023), since the
model only receives standardised values, not the digits.

Every encoder: ``tokens(inputs, present) -> (embeddings [B, T, W], mask [B, T])`` and
``run(embeddings, mask, extra=None, extra_mask=None) -> (states, mask)`` with the extra tokens
appended; absent content is zeroed and masked, so it never reaches an output. The patch encoders
(smri, fmri, genetics) also give ``patches(x)``, the raw content of each token, which
``adfuse.pretrain`` reconstructs (masked-token pre-training). ``save_encoder`` / ``load_encoder``
write and read a reusable encoder folder (``config.json`` + ``model.safetensors``).
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from adfuse.config import StrictModel
from adfuse.errors import ConfigError
from adfuse.models.layers.pooling import masked_mean

ENCODER_FORMAT = "adfuse-encoder/1"
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
GROUPS: dict[str, tuple[str, ...]] = {
    "smri": ("t1",),
    "fmri": ("fmri",),
    "text": ("notes", "clinical"),
    "genetics": ("genotype",),
}
PRETRAINABLE = ("smri", "fmri", "genetics")
# LoRA targets by the attention projections a backbone has (MONAI, BERT, Llama, T5/ESM-like)
LORA_TARGETS = (("qkv",), ("query", "value"), ("q_proj", "v_proj"), ("q", "v"), ("Wqkv",))
READABLE = {
    "AGE": "age",
    "PTGENDER": "sex",
    "PTEDUCAT": "years of education",
    "APOE4": "APOE4 alleles",
    "MMSE": "MMSE score",
    "CDRSB": "CDR sum of boxes",
    "ADAS11": "ADAS-Cog 11 score",
    "ADAS13": "ADAS-Cog 13 score",
    "FAQ": "functional activities questionnaire",
    "MOCA": "MoCA score",
    "PTETHCAT": "ethnicity",
    "PTRACCAT": "race",
    "PTMARRY": "marital status",
}


class EncoderConfig(StrictModel):
    """Architecture of one encoder (saved as ``config.json`` next to its weights)."""

    group: Literal["smri", "fmri", "genetics", "text"]
    input_shape: tuple[int, ...] = ()
    width: int = Field(64, ge=8)
    depth: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(2.0, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    patch: int = Field(8, ge=1)  # smri: cubic patch side
    window: int = Field(10, ge=1)  # fmri: time points per token
    snps_per_token: int = Field(32, ge=1)  # genetics without a gene annotation
    token_groups: list[list[int]] = Field(default_factory=list)  # genetics: SNP indices per token
    path: str | None = None  # a local Hugging Face folder as backbone (text, genetics)
    layers: int | None = Field(None, ge=1)  # keep the first layers of a Hugging Face backbone
    trainable: bool = True  # a Hugging Face backbone is fine-tuned in phase 1


# ----------------------------------------------------------------------------- backbones
class BlockBackbone(nn.Module):
    """Pre-norm MONAI transformer blocks with a key-padding mask, then a LayerNorm."""

    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: float, dropout: float):
        from adfuse.config import require

        blocks = require("monai.networks.blocks", "imaging", "the foundation encoders")
        super().__init__()
        if width % heads:
            raise ConfigError(f"foundation encoder: width {width} is not a multiple of {heads}")
        self.width = width
        self.blocks = nn.ModuleList(
            blocks.TransformerBlock(width, int(width * mlp_ratio), heads, dropout, qkv_bias=True)
            for _ in range(depth)
        )
        for block in self.blocks:
            block.norm_cross_attn = nn.Identity()  # unused without cross-attention
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, attn_mask=mask)
        return self.norm(x)


class HuggingFaceBackbone(nn.Module):
    """A local Hugging Face model run through ``inputs_embeds`` (its first ``layers`` layers)."""

    def __init__(self, path: str | None, layers: int | None = None, trainable: bool = True):
        from adfuse.models.text import load_language_model

        super().__init__()
        model = load_language_model(path)
        if layers is not None:
            _truncate(model, layers)
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # pooling is ours; an unused pooler would get no gradient
        self.model = model
        self.width = int(model.config.hidden_size)
        self.trainable = trainable
        model.requires_grad_(trainable)

    def train(self, mode: bool = True) -> HuggingFaceBackbone:
        super().train(mode)
        if not self.trainable:
            self.model.eval()
        return self

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids.long())

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.model(inputs_embeds=x, attention_mask=mask.long())
        return out.last_hidden_state


def _truncate(model: nn.Module, layers: int) -> None:
    """Keep the first ``layers`` layers of a Hugging Face model (its layer list is the ModuleList
    as long as ``config.num_hidden_layers``)."""
    config = model.config
    total = int(config.num_hidden_layers)
    if layers >= total:
        return
    for module in model.modules():
        for name, child in module.named_children():
            if isinstance(child, nn.ModuleList) and len(child) == total:
                setattr(module, name, child[:layers])
                config.num_hidden_layers = layers
                if isinstance(getattr(config, "layer_types", None), list):
                    config.layer_types = config.layer_types[:layers]
                return
    raise ConfigError(f"text model: no list of {total} layers found to keep {layers} of them")


def lora_targets(module: nn.Module) -> list[str]:
    """The attention projections LoRA adapts in this backbone."""
    names = {name.rsplit(".", 1)[-1] for name, m in module.named_modules() if _is_linear(m)}
    for targets in LORA_TARGETS:
        if all(t in names for t in targets):
            return list(targets)
    raise ConfigError("no attention projection (qkv, query/value, q_proj/v_proj) to put LoRA on")


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


# ----------------------------------------------------------------------------- encoders
class FoundationEncoder(nn.Module, ABC):
    """Base: tokens -> backbone (extra tokens appended) -> states; masked mean pooling."""

    modalities: tuple[str, ...] = ()

    def __init__(self, config: EncoderConfig, backbone: nn.Module):
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.width = backbone.width

    @abstractmethod
    def tokens(self, inputs: dict[str, torch.Tensor], present: dict[str, torch.Tensor]):
        """``(tokens [B, T, width], valid [B, T])`` of this encoder's modalities."""

    def present(self, present: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B]`` True where the sample has any of this encoder's modalities."""
        here = [present[m] for m in self.modalities if m in present]
        return torch.stack(here).any(dim=0)

    def run(self, embeddings, mask, extra=None, extra_mask=None):
        if extra is not None and extra.shape[1]:
            embeddings = torch.cat([embeddings, extra.to(embeddings.dtype)], dim=1)
            mask = torch.cat([mask, extra_mask], dim=1)
        return self.backbone(embeddings, mask), mask

    def forward(self, inputs, present, extra=None, extra_mask=None):
        """States ``[B, T (+ extra), W]`` and their mask, for samples that have the modality."""
        embeddings, mask = self.tokens(inputs, present)
        return self.run(embeddings, mask, extra, extra_mask)

    @staticmethod
    def pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_mean(states, mask)


class PatchEncoder(FoundationEncoder):
    """An encoder whose tokens are linear maps of raw patches (what pre-training reconstructs)."""

    modality: str = ""

    @property
    def modalities(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.modality,)

    @abstractmethod
    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, P]``: the raw content of each token (zero-padded)."""

    def patch_valid(self) -> torch.Tensor:
        """``[T, P]`` True where a patch entry is real (not padding)."""
        return torch.ones(self.n_tokens, self.patch_size, dtype=torch.bool)

    @abstractmethod
    def embed(self, patches: torch.Tensor, replace=None, mask_token=None) -> torch.Tensor:
        """Token embeddings with positions; ``replace [B, T]`` swaps tokens for ``mask_token``."""

    def tokens(self, inputs, present):
        x = inputs[self.modality]
        here = present[self.modality]
        x = torch.where(here.view(-1, *[1] * (x.dim() - 1)), x, torch.zeros_like(x))
        embeddings = self.embed(self.patches(x.to(self._dtype())))
        mask = here[:, None].expand(-1, embeddings.shape[1])
        return embeddings, mask

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


class VolumeEncoder(PatchEncoder):
    """sMRI: a ViT over 3D patches (MONAI ``PatchEmbeddingBlock``, perceptron projection)."""

    modality = "t1"

    def __init__(self, config: EncoderConfig):
        from adfuse.config import require

        blocks = require("monai.networks.blocks", "imaging", "the foundation encoders")
        shape = tuple(config.input_shape)
        if any(n % config.patch for n in shape):
            raise ConfigError(
                f"smri encoder: volume {shape} is not divisible into {config.patch}^3 patches"
            )
        super().__init__(config, _backbone(config))
        self.embedding = blocks.PatchEmbeddingBlock(
            1, shape, config.patch, self.width, config.heads, proj_type="perceptron",
            dropout_rate=config.dropout, spatial_dims=3,
        )  # fmt: skip
        self.n_tokens = math.prod(n // config.patch for n in shape)
        self.patch_size = config.patch**3

    def patches(self, x):
        return self.embedding.patch_embeddings[0](x.unsqueeze(1))  # einops Rearrange

    def embed(self, patches, replace=None, mask_token=None):
        h = self.embedding.patch_embeddings[1](patches)
        if replace is not None:
            h = torch.where(replace[..., None], mask_token.to(h.dtype), h)
        return self.embedding.dropout(h + self.embedding.position_embeddings)


class SeriesEncoder(PatchEncoder):
    """fMRI: windows of ``window`` time points x every ROI -> linear -> tokens + positions."""

    modality = "fmri"

    def __init__(self, config: EncoderConfig):
        super().__init__(config, _backbone(config))
        length, n_regions = config.input_shape
        self.window = min(config.window, length)
        self.n_tokens = math.ceil(length / self.window)
        self.padding = self.n_tokens * self.window - length
        self.patch_size = self.window * n_regions
        self.projection = nn.Linear(self.patch_size, self.width)
        self.position = nn.Parameter(torch.randn(self.n_tokens, self.width) * 0.02)
        self.dropout = nn.Dropout(config.dropout)

    def patches(self, x):
        x = nn.functional.pad(x, (0, 0, 0, self.padding))
        return x.reshape(len(x), self.n_tokens, self.patch_size)

    def patch_valid(self):
        valid = torch.ones(self.n_tokens * self.window, self.patch_size // self.window)
        valid[self.n_tokens * self.window - self.padding :] = 0
        return valid.reshape(self.n_tokens, self.patch_size).bool()

    def embed(self, patches, replace=None, mask_token=None):
        h = self.projection(patches)
        if replace is not None:
            h = torch.where(replace[..., None], mask_token.to(h.dtype), h)
        return self.dropout(h + self.position)


class GeneticsEncoder(PatchEncoder):
    """Genetics: one token per gene (its SNPs through the gene's own linear map) + a gene
    embedding; with a Hugging Face DNA model as backbone, the tokens go in as ``inputs_embeds``."""

    modality = "genotype"

    def __init__(self, config: EncoderConfig):
        super().__init__(config, _backbone(config))
        groups = config.token_groups
        self.n_tokens = len(groups)
        self.patch_size = max(len(g) for g in groups)
        index = torch.zeros(self.n_tokens, self.patch_size, dtype=torch.long)
        valid = torch.zeros(self.n_tokens, self.patch_size, dtype=torch.bool)
        for row, snps in enumerate(groups):
            index[row, : len(snps)] = torch.tensor(snps)
            valid[row, : len(snps)] = True
        self.register_buffer("index", index, persistent=False)
        self.register_buffer("valid", valid, persistent=False)
        bound = 1 / math.sqrt(self.patch_size)
        self.weight = nn.Parameter(
            torch.empty(self.n_tokens, self.patch_size, self.width).uniform_(-bound, bound)
        )
        self.bias = nn.Parameter(torch.zeros(self.n_tokens, self.width))
        self.gene = nn.Parameter(torch.randn(self.n_tokens, self.width) * 0.02)
        self.norm = nn.LayerNorm(self.width)
        self.dropout = nn.Dropout(config.dropout)

    def patches(self, x):
        return x[:, self.index] * self.valid.to(x.dtype)

    def patch_valid(self):
        return self.valid.cpu()

    def embed(self, patches, replace=None, mask_token=None):
        h = torch.einsum("btg,tgw->btw", patches, self.weight) + self.bias
        if replace is not None:
            h = torch.where(replace[..., None], mask_token.to(h.dtype), h)
        return self.dropout(self.norm(h + self.gene))


def gene_token_groups(spec, snps_per_token: int) -> list[list[int]]:
    """SNP indices per token: one token per gene of ``spec.groups``; SNPs in no gene (or all of
    them without an annotation) in contiguous chunks of ``snps_per_token``."""
    position = {name: i for i, name in enumerate(spec.feature_names)}
    groups = [sorted(position[s] for s in snps if s in position) for snps in spec.groups.values()]
    groups = [g for g in groups if g]
    covered = {i for g in groups for i in g}
    rest = [i for i in range(spec.shape[0]) if i not in covered]
    groups += [rest[i : i + snps_per_token] for i in range(0, len(rest), snps_per_token)]
    return groups


class TextEncoder(FoundationEncoder):
    """Clinical notes and clinical fields written as text, through a Hugging Face model."""

    modalities = ("notes", "clinical")

    def __init__(self, config: EncoderConfig, clinical_spec=None, clinical_width: int = 0):
        super().__init__(config, HuggingFaceBackbone(config.path, config.layers, config.trainable))
        from adfuse.models.text import pad_token_id

        self.pad_id = pad_token_id(self.backbone.model.config)
        self.has_clinical = clinical_spec is not None
        if self.has_clinical:
            fields = dict(clinical_spec.categories)
            self.n_numeric = clinical_width - sum(len(v) for v in fields.values())
            names = [f for f in clinical_spec.feature_names if f not in fields][: self.n_numeric]
            names += [f"value {i}" for i in range(len(names), self.n_numeric)]
            self.field_sizes = [len(v) for v in fields.values()]
            phrase = self._phrase_embedding
            self.field_names = nn.Parameter(
                torch.stack([phrase(READABLE.get(n, n.replace("_", " "))) for n in names + list(fields)])
            )  # fmt: skip
            self.categories = nn.Parameter(
                torch.stack([phrase(v) for values in fields.values() for v in values])
                if fields
                else torch.zeros(0, self.width),
                requires_grad=bool(fields),
            )
            self.number = nn.Parameter(phrase("number"))

    def _phrase_embedding(self, text: str) -> torch.Tensor:
        """Mean input embedding of ``text``'s word pieces (a small random vector without a
        tokenizer in the model folder)."""
        from adfuse.models.text import load_tokenizer

        try:
            tokenizer = load_tokenizer(self.config.path)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        except ConfigError:
            ids = []
        ids = [i for i in ids if i < self.backbone.model.config.vocab_size]
        if not ids:
            return torch.randn(self.width) * 0.02
        with torch.no_grad():
            return self.backbone.embed_ids(torch.tensor(ids)).mean(dim=0).detach().clone()

    def clinical_tokens(self, x: torch.Tensor, here: torch.Tensor):
        """Two tokens per field (name, value); a missing category's value token is masked."""
        x = torch.where(here[:, None], x, torch.zeros_like(x)).to(self.number.dtype)
        values = [x[:, : self.n_numeric, None] * self.number]  # xVal: value x "number"
        valid = [here[:, None].expand(-1, self.n_numeric)]
        start, row = self.n_numeric, 0
        for size in self.field_sizes:
            block = x[:, start : start + size]
            values.append((block @ self.categories[row : row + size])[:, None])
            valid.append(here[:, None] & (block.amax(dim=1, keepdim=True) > 0))
            start, row = start + size, row + size
        value, value_valid = torch.cat(values, dim=1), torch.cat(valid, dim=1)  # [B, F, W], [B, F]
        name = self.field_names.expand(len(x), -1, -1)
        tokens = torch.stack([name, value], dim=2).flatten(1, 2)
        mask = torch.stack([here[:, None].expand_as(value_valid), value_valid], dim=2)
        return tokens, mask.flatten(1, 2)

    def tokens(self, inputs, present):
        parts, masks = [], []
        if self.has_clinical and "clinical" in inputs:
            tokens, mask = self.clinical_tokens(inputs["clinical"], present["clinical"])
            parts.append(tokens)
            masks.append(mask)
        if "notes" in inputs:
            here = present["notes"]
            ids = torch.where(here[:, None], inputs["notes"].long(), self.pad_id)
            real = ids != self.pad_id
            length = int(real.any(dim=0).nonzero().max()) + 1 if real.any() else 1
            ids, real = ids[:, :length], real[:, :length]  # trailing padding is never attended
            parts.append(self.backbone.embed_ids(ids))
            masks.append(real & here[:, None])
        embeddings = torch.cat([p.to(parts[-1].dtype) for p in parts], dim=1)
        return embeddings, torch.cat(masks, dim=1)


def _backbone(config: EncoderConfig) -> nn.Module:
    if config.path is not None:
        return HuggingFaceBackbone(config.path, config.layers, config.trainable)
    return BlockBackbone(config.width, config.depth, config.heads, config.mlp_ratio, config.dropout)


def build_encoder(config: EncoderConfig, clinical_spec=None, clinical_width: int = 0):
    """The encoder a config describes (weights initialised at random, or the HF model's)."""
    if config.group == "text":
        return TextEncoder(config, clinical_spec, clinical_width)
    return {"smri": VolumeEncoder, "fmri": SeriesEncoder, "genetics": GeneticsEncoder}[
        config.group
    ](config)


# ----------------------------------------------------------------------------- LoRA on/off
@contextmanager
def adapters_enabled(module: nn.Module, enabled: bool = True):
    """Run ``module`` with its peft adapters on (or off); ``requires_grad`` flags are kept."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in module.modules() if isinstance(m, BaseTunerLayer)]
    flags = [(p, p.requires_grad) for m in layers for p in m.parameters()]
    for layer in layers:
        layer.enable_adapters(enabled)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(not enabled)
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def add_lora(encoder: FoundationEncoder, rank: int, alpha: float, dropout: float) -> None:
    """peft LoRA adapters on the backbone's attention projections, off until enabled."""
    from adfuse.config import require

    peft = require("peft", "text", "LoRA adapters")
    flags = [(p, p.requires_grad) for p in encoder.parameters()]
    config = peft.LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=lora_targets(encoder.backbone),
    )
    peft.inject_adapter_in_model(config, encoder.backbone, adapter_name="anchor")
    from peft.tuners.tuners_utils import BaseTunerLayer

    for layer in encoder.modules():
        if isinstance(layer, BaseTunerLayer):
            layer.enable_adapters(False)
    for parameter, flag in flags:  # peft freezes the rest of the model; the stages decide that
        parameter.requires_grad_(flag)
    for name, parameter in encoder.named_parameters():
        if is_lora(name):
            parameter.requires_grad_(True)


def is_lora(name: str) -> bool:
    return ".lora_" in name


# ----------------------------------------------------------------------------- pre-training
class MaskedTokenModel(nn.Module):
    """Encoder + mask token + linear decoder: reconstruct masked tokens' raw patches."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        self.mask_token = nn.Parameter(torch.zeros(encoder.width))
        self.decoder = nn.Linear(encoder.width, encoder.patch_size)
        self.register_buffer("valid", encoder.patch_valid(), persistent=False)

    def loss(self, x: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        patches = self.encoder.patches(x)
        tokens = self.encoder.embed(patches, masked, self.mask_token)
        everything = torch.ones(masked.shape, dtype=torch.bool, device=masked.device)
        states = self.encoder.backbone(tokens, everything)
        weight = masked[..., None] & self.valid  # [B, T, P]
        error = (self.decoder(states) - patches) ** 2
        return (error * weight).sum() / weight.sum().clamp(min=1)


# ----------------------------------------------------------------------------- saved encoders
def save_encoder(encoder: FoundationEncoder, out: Path, info: dict[str, Any], force: bool) -> Path:
    """Write ``config.json`` (architecture + provenance) and ``model.safetensors`` atomically."""
    from safetensors.torch import save_file

    from adfuse.io import atomic_directory

    with atomic_directory(Path(out), force=force) as building:
        state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
        save_file(state, str(building / WEIGHTS_FILE), metadata={"format": ENCODER_FORMAT})
        document = {"format": ENCODER_FORMAT, "encoder": encoder.config.model_dump(mode="json")}
        (building / CONFIG_FILE).write_text(json.dumps({**document, **info}, indent=2) + "\n")
    return Path(out)


def read_encoder_config(folder: str | Path) -> EncoderConfig:
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise ConfigError(f"{folder}: not a saved encoder (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    document = json.loads(path.read_text())
    if document.get("format") != ENCODER_FORMAT:
        raise ConfigError(f"{path}: format {document.get('format')!r}, expected {ENCODER_FORMAT}")
    return EncoderConfig.model_validate(document["encoder"])


def load_encoder(folder: str | Path, group: str, input_shape: tuple[int, ...]) -> PatchEncoder:
    """A saved (pre-trained) encoder, checked against the group and input shape it must serve."""
    from safetensors.torch import load_file

    config = read_encoder_config(folder)
    if config.group != group:
        raise ConfigError(f"{folder}: a {config.group} encoder, not a {group} one")
    if tuple(config.input_shape) != tuple(input_shape):
        raise ConfigError(
            f"{folder}: made for inputs {tuple(config.input_shape)}, this run has {input_shape}"
        )
    encoder = build_encoder(config)
    encoder.load_state_dict(load_file(str(Path(folder) / WEIGHTS_FILE)), strict=True)
    return encoder
