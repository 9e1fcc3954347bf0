"""ACMCA: Multi-omic Prognosis of Alzheimer's Disease with an Asymmetric Cross-Modal
Cross-Attention Network (arXiv 2507.08855).

Non-imaging data ask, images answer: the clinical tokens are the queries of a cross-attention over
the MRI slice's spatial tokens, the genetic (SNP) tokens the queries over the PET slice's tokens,
never the reverse. The fused tokens go through an FNet block (real part of a 2-D DFT) in parallel
with a transformer encoder layer; their sum feeds a 4-layer MLP.

Data flow, in this file's order:
1. shallow encoders to a shared ``dim``-d space (``models/encoders.py``): a MONAI 2D ResNet on the
   mid-sagittal slice keeps its last feature map's cells as spatial tokens, so attention has
   something to choose from; an MLP turns the clinical and the SNP vector into ``query_tokens`` each.
2. absent modalities (the paper needed all four; here any subset may be absent): a missing
   clinical or genetic vector becomes a learned query; a missing image's branch output (its
   cross-attention result) becomes a learned "absent" token. Absent content is never computed.
3. asymmetric cross-attention (the shared ``layers.cross_attention.CrossAttention``) with a residual
   path from the query: fused = query + attention(query -> image tokens).
4. deep feature extraction: ``FNetBlock`` and a transformer encoder layer in parallel on the fused
   tokens, outputs **summed**: both are residual blocks in the same token space, so the sum keeps
   the width and the ablations without one of them feed an identical head (only the removed
   branch differs); a concatenation would change the head's input width between ablations.
5. a 4-layer MLP on the flattened tokens; cross-entropy (the paper's loss) is the default loss.

Ablations (config): ``fusion="symmetric"`` (also MRI -> clinical and PET -> genetic), ``"swapped"``
(image tokens query the non-image tokens), ``"concat"`` (no cross-attention: the four pooled
embeddings); ``fnet=False``; ``transformer=False``; ``volume3d=True`` (3D volumes, not slices).
By their names too: ``symmetric=True``, ``swapped``, ``concat``, ``no_fnet``, ``no_transformer``,
or ``ablation="no_fnet"`` (``--set no_fnet=true`` on the command line).

| setting              | paper                     | ``paper`` preset               | ``cpu`` preset              |
|----------------------|---------------------------|--------------------------------|-----------------------------|
| images               | mid-sagittal slice 224^2  | slice_size 224                 | the run's slice (64^2)      |
| image encoder        | ResNet50                  | MONAI ResNet basic [3,4,6,3], widths 64-512, 7^2 stem + max-pool (ResNet-34 depth: the shared encoder has no bottleneck blocks) -> 7x7 tokens | basic [1,1,1,1], widths 8-64, stride-2 stem -> 4x4 tokens |
| SNPs / clinical      | ~15,000 AD-gene SNPs / 7  | every SNP / clinical column    | same                        |
| shared space ``dim`` | 100                       | 100                            | 32                          |
| query tokens         | one vector per modality   | 1                              | 1                           |
| attention heads      | n/s                       | 4                              | 4                           |
| MLP head (4 layers)  | widths n/s                | 256, 128, 64                   | 64, 32, 16                  |
| dropout              | n/s                       | 0.1                            | 0.3                         |
| modality dropout     | none (complete data)      | 0                              | 0.2                         |
| training (run opts)  | batch 32, 125 epochs, lr 1e-3, cross-entropy, CN/MCI/AD and binary | ``--batch-size 32 --epochs 125 --lr 1e-3`` | engine defaults (16, 30, 1e-3, AdamW) |

n/s: not stated in the paper summary we work from. Batch size, epochs and learning rate are options
of the run (the engine's), not of the model, so no preset sets them.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from adfuse.errors import ConfigError
from adfuse.models.base import ModelConfig
from adfuse.models.baselines import EncodedModel
from adfuse.models.encoders import TokenEncoder, make_encoder
from adfuse.models.layers.cross_attention import CrossAttention
from adfuse.models.layers.fnet import FNetBlock
from adfuse.models.registry import register
from adfuse.prepare import PrepareConfig

PET = ("amyloid", "fdg", "tau")  # the first the run has is the PET, unless pet_modality says
QUERY_ROLES = ("clinical", "genetic")  # non-imaging: they ask
IMAGE_ROLES = ("mri", "pet")  # imaging: they answer
PAIRS = (("clinical", "mri"), ("genetic", "pet"))  # who asks whom (ACMCA's fusion module)


class AcmcaConfig(ModelConfig):
    dim: int = Field(32, ge=4)  # the shared space (paper: 100)
    heads: int = Field(4, ge=1)
    query_tokens: int = Field(1, ge=1)  # tokens per non-image vector (paper: the vector itself)
    size: Literal["cpu", "paper"] = "cpu"  # encoder widths (models/encoders.py)
    image_layers: tuple[int, int, int, int] = (1, 1, 1, 1)  # ResNet blocks per stage
    slice_size: int | None = Field(None, ge=16)  # None: the run's prepare.slice_shape
    hidden: tuple[int, int, int] = (64, 32, 16)  # the 4-layer MLP's hidden widths
    dropout: float = Field(0.3, ge=0, lt=1)
    modality_dropout: float = Field(0.0, ge=0, lt=1)  # training only, as in the fusion baselines
    pet_modality: Literal["amyloid", "fdg", "tau"] | None = None
    fusion: Literal["asymmetric", "symmetric", "swapped", "concat"] = "asymmetric"
    fnet: bool = True
    transformer: bool = True
    volume3d: bool = False

    ABLATIONS: ClassVar[dict[str, dict[str, Any]]] = {  # the names for the switches
        "symmetric": {"fusion": "symmetric"},
        "swapped": {"fusion": "swapped"},
        "concat": {"fusion": "concat"},
        "no_fnet": {"fnet": False},
        "no_transformer": {"transformer": False},
    }

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> AcmcaConfig:
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not a multiple of heads {self.heads}")
        return self


PRESETS = {
    "cpu": {"dim": 32, "heads": 4, "hidden": (64, 32, 16), "dropout": 0.3, "modality_dropout": 0.2},
    "paper": {
        "dim": 100,
        "heads": 4,
        "size": "paper",
        "image_layers": (3, 4, 6, 3),
        "slice_size": 224,
        "hidden": (256, 128, 64),
        "dropout": 0.1,
    },
}


def assign_roles(modalities: list[str], pet_modality: str | None) -> dict[str, str | None]:
    """role -> the modality playing it in this run (None: the run does not have it)."""
    if pet_modality is not None and pet_modality not in modalities:
        raise ConfigError(
            f"acmca: pet_modality '{pet_modality}' is not among the run's modalities "
            f"({', '.join(modalities)})"
        )
    pet = pet_modality or next((m for m in PET if m in modalities), None)
    return {
        "clinical": "clinical" if "clinical" in modalities else None,
        "genetic": "genotype" if "genotype" in modalities else None,
        "mri": "t1" if "t1" in modalities else None,
        "pet": pet,
    }


def mlp_head(in_dim: int, hidden: tuple[int, ...], out_dim: int, dropout: float) -> nn.Sequential:
    """LayerNorm, then Linear-GELU-Dropout per hidden width, then the output Linear."""
    widths = (in_dim, *hidden)
    layers: list[nn.Module] = [nn.LayerNorm(in_dim)]
    for width_in, width_out in pairwise(widths):
        layers += [nn.Linear(width_in, width_out), nn.GELU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers, nn.Linear(widths[-1], out_dim))


class ACMCA(EncodedModel):
    def __init__(self, spec, task, modalities, config: AcmcaConfig, prepare=None):
        roles = assign_roles(modalities, config.pet_modality)
        super().__init__(spec, task, [m for m in roles.values() if m], config, prepare)
        self.roles = roles
        dim, n_queries = config.dim, config.query_tokens
        self.learned_query = nn.ParameterDict(
            {
                role: nn.Parameter(nn.init.trunc_normal_(torch.empty(n_queries, dim), std=0.02))
                for role in QUERY_ROLES
            }
        )
        self.directions = self._directions()
        if config.fusion == "concat":
            self.absent = nn.ParameterDict({r: nn.Parameter(torch.zeros(dim)) for r in IMAGE_ROLES})
            n_fused = len(QUERY_ROLES) + len(IMAGE_ROLES)
        else:
            self.cross = nn.ModuleDict(
                {
                    f"{asker}_to_{answerer}": CrossAttention(dim, config.heads, config.dropout)
                    for asker, answerer in self.directions
                    if self._image_of(asker, answerer) in self.image_modalities
                }
            )
            asker_tokens = {r: n_queries for r in QUERY_ROLES} | {
                r: self.encoders[self.roles[r]].n_tokens for r in self.image_modalities
            }
            self.absent = nn.ParameterDict(
                {
                    f"{asker}_to_{answerer}": nn.Parameter(torch.zeros(asker_tokens[asker], dim))
                    for asker, answerer in self.directions
                }
            )
            n_fused = sum(asker_tokens[asker] for asker, _ in self.directions)
        self.fnet = FNetBlock(dim, 2 * dim, config.dropout) if config.fnet else None
        self.transformer = (
            nn.TransformerEncoderLayer(
                dim, config.heads, 2 * dim, config.dropout, activation="gelu", batch_first=True
            )
            if config.transformer
            else None
        )
        self.head = mlp_head(n_fused * dim, config.hidden, self.out_dim, config.dropout)

    @property
    def image_modalities(self) -> dict[str, str]:
        """image role -> modality, for the image roles this run has."""
        return {r: self.roles[r] for r in IMAGE_ROLES if self.roles[r]}

    @staticmethod
    def _image_of(asker: str, answerer: str) -> str:
        return asker if asker in IMAGE_ROLES else answerer

    def _directions(self) -> list[tuple[str, str]]:
        """(asker, answerer) pairs; an image that is not in the run cannot ask."""
        forward = list(PAIRS)
        reverse = [(image, query) for query, image in PAIRS if image in self.image_modalities]
        return {"asymmetric": forward, "swapped": reverse, "symmetric": forward + reverse}.get(
            self.config.fusion, []
        )

    # ------------------------------------------------------------------ 1. shallow encoders
    def views(self) -> dict[str, str]:
        view = "volume" if self.config.volume3d else "slice"
        return {m: view for m in self.modalities if self.spec[m].kind == "volume"}

    def make_encoder(self, modality: str) -> TokenEncoder:
        config, spec = self.config, self.spec[modality]
        options = {"dropout": config.dropout}
        if spec.kind == "volume":
            options["layers"] = config.image_layers
        else:
            options["tokens"] = config.query_tokens
        view, shape = self.views().get(modality), self.input_shape(modality)
        return make_encoder(spec, view, shape, config.dim, config.size, **options)

    # ------------------------------------------------------------------ 2. absent modalities
    def query_tokens(self, batch, role: str) -> torch.Tensor:
        """``[B, query_tokens, dim]``: the encoded vector, or the learned query where absent."""
        learned = self.learned_query[role].expand(len(batch.ids), -1, -1)
        modality = self.roles[role]
        if modality is None:
            return learned
        present = batch.present[modality]
        tokens = self.encoders[modality].encode(batch.inputs[modality], present)
        return torch.where(present[:, None, None], tokens, learned)

    def image_tokens(self, batch, role: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, cells, dim]`` spatial tokens (zeros where absent, never computed) and presence."""
        modality = self.roles[role]
        present = batch.present[modality]
        return self.encoders[modality].encode(batch.inputs[modality], present), present

    # ------------------------------------------------------------------ 3. cross-modal fusion
    def cross_attend(self, queries: dict, images: dict) -> torch.Tensor:
        """``[B, n_fused, dim]``: one block of tokens per (asker, answerer) direction."""
        fused = []
        for asker, answerer in self.directions:
            name = f"{asker}_to_{answerer}"
            absent = self.absent[name]
            if asker in QUERY_ROLES:  # the paper's direction: a non-image vector asks an image
                query = queries[asker]
                if answerer not in images:
                    fused.append(query + absent)
                    continue
                tokens, present = images[answerer]
                attended = self.cross[name](query, tokens)
                fused.append(query + torch.where(present[:, None, None], attended, absent))
            else:  # ablation: image tokens ask a non-image vector
                tokens, present = images[asker]
                asked = tokens + self.cross[name](tokens, queries[answerer])
                fused.append(torch.where(present[:, None, None], asked, absent))
        return torch.cat(fused, dim=1)

    def concatenate(self, queries: dict, images: dict) -> torch.Tensor:
        """``[B, 4, dim]``: the pooled embeddings side by side (the no-cross-attention ablation)."""
        slots = [queries[role].mean(dim=1) for role in QUERY_ROLES]
        n_samples = len(slots[0])
        for role in IMAGE_ROLES:
            absent = self.absent[role].expand(n_samples, -1)
            if role in images:
                tokens, present = images[role]
                slots.append(torch.where(present[:, None], tokens.mean(dim=1), absent))
            else:
                slots.append(absent)
        return torch.stack(slots, dim=1)

    # ------------------------------------------------------------------ 4. deep feature extraction
    def deep_features(self, fused: torch.Tensor) -> torch.Tensor:
        """FNet and transformer in parallel on the fused tokens, outputs summed (see the top)."""
        branches = [block(fused) for block in (self.fnet, self.transformer) if block is not None]
        return torch.stack(branches).sum(dim=0) if branches else fused

    # ------------------------------------------------------------------ 5. all together
    def forward(self, batch) -> torch.Tensor:
        batch = self.drop_modalities(batch)
        queries = {role: self.query_tokens(batch, role) for role in QUERY_ROLES}
        images = {role: self.image_tokens(batch, role) for role in self.image_modalities}
        if self.config.fusion == "concat":
            fused = self.concatenate(queries, images)
        else:
            fused = self.cross_attend(queries, images)
        deep = self.deep_features(fused)
        return self.format_output(self.head(deep.flatten(1)))

    # ------------------------------------------------------------------ interpretation
    @torch.no_grad()
    def image_attention(self, batch) -> dict[str, torch.Tensor]:
        """image role -> ``[B, cells]``: how the non-image queries attend over that image's
        spatial tokens (mean over heads and queries; the paper's direction only). Meaningless for
        a sample without the image: use ``batch.present``."""
        self(batch)
        weights = {}
        for asker, answerer in PAIRS:
            name = f"{asker}_to_{answerer}"
            if (asker, answerer) in self.directions and name in self.cross:
                weights[answerer] = self.cross[name].last_weights.mean(dim=(1, 2))
        return weights


@register(
    "acmca",
    config=AcmcaConfig,
    presets=PRESETS,
    paper="arXiv 2507.08855",
    accepts=("clinical", "genotype", "t1", "amyloid", "fdg", "tau"),
    description="ACMCA: clinical asks MRI, genetics asks PET (cross-attention), FNet || transformer",
)
def acmca(spec, task, modalities, config, prepare):
    """Build ACMCA; a ``slice_size`` in the config sets the prepared slices' size."""
    if config.slice_size is not None:
        prepare = (prepare or PrepareConfig()).model_copy(
            update={"slice_shape": (config.slice_size, config.slice_size)}
        )
    return ACMCA(spec, task, modalities, config, prepare)
