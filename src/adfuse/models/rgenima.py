"""R-GenIMA: Integrating Neuroimaging and Genetics with Interpretable Multimodal AI for Alzheimer's
Disease Progression (arXiv 2512.18986; no public code: this is our reading of the paper).

Brain regions become tokens, SNPs become text, and one language model attends across both:
1. **RiT** (ROI-wise vision transformer): the T1 volume is cut into one crop per atlas region
   (prepare's ``roi`` view, each crop resized to a cube); each crop becomes **one token** by a 3D
   convolution whose kernel spans the whole crop, computed as the equivalent linear map of the
   flattened crop (``encoders.RoiEncoder``), plus a learned
   region embedding, then a light ViT over the region tokens. Stage 1 trains RiT with its own head on
   the task; afterwards it is frozen (its tokens are detached in the fused path).
2. **Genetic prompting** (``layers/genetic_prompt.py``): SNP QC on the training split (MAF > 0.05,
   HWE exact p > 1e-6; counts in ``RUN/model_fitted.json``), SNPs grouped by gene (the dataset's
   SNP -> gene table, ``spec.groups``) and written as text ``APOE: rs429358 0/1, rs7412 0/0; ...``,
   tokenised by the language model's tokenizer; in training the gene order is shuffled per subject.
3. **Connector + language model**: a linear map takes the region tokens into the language model's
   embedding space; ``[CLS] regions... SNP text... [SEP]`` go through the model together
   (``inputs_embeds``), so its self-attention fuses them; a head classifies the mean of the output
   states. Stage 2 trains connector, language model (or LoRA adapters on it) and head, RiT frozen.

A subject without T1 has no region tokens in its sequence, one without SNPs no text: absent content
is never computed. Training data (the paper's three configurations, ``training_data``): ``paired``
(the loss counts subjects with T1 and SNPs), ``mixture`` (subjects with SNPs; T1 is withheld from
paired subjects at random so that half of them are SNP-only), ``gene_only`` (SNPs only, no T1).

Baselines of the paper's tables, as switches: ``genetic_encoder="mlp"`` (an MLP over the kept SNPs'
dosages, one token per gene, instead of text), ``fusion="concat"`` (late fusion: the pooled region
tokens beside the language model's encoding of the SNP text, no cross-modal attention), and
``image_encoder="cnn"`` (whole-brain MONAI ResNet, the paper's Med3D, instead of RiT). With
``training_data="gene_only", genetic_encoder="mlp"`` it is the paper's SNP-only MLP.

Interpretation: ``adfuse explain RUN`` (``adfuse.explain.rollout``): attention rollout through the
language model's layers -> an ROI x gene matrix per subject; stages, bootstrap stability, enrichment.

| setting                 | paper                                  | ``paper`` preset          | ``cpu`` preset         |
|-------------------------|----------------------------------------|---------------------------|------------------------|
| atlas regions           | 109 (Desikan-Killiany + subcortical)   | the dataset's atlas       | the dataset's atlas    |
| ROI crop                | 96^3                                   | 96^3                      | 16^3                   |
| RiT width / ViT         | "lightweight ViT", sizes n/s           | 256, 4 layers, 8 heads    | 64, 2 layers, 4 heads  |
| SNPs                    | 105 genes, 1,079 SNPs after QC         | every QC-passing SNP that fits the positions | 1 per gene, no SNP ids, text <= 384 tokens |
| SNP QC                  | MAF > 0.05, HWE p > 1e-6               | same                      | same                   |
| language model          | Llama3-8B / Qwen2.5-7B                 | bundled MiniLM (``lm_path`` = a local Llama/Qwen folder) | MiniLM, first layer    |
| LM training             | fine-tuned (PEFT), bf16, 8xA100        | LoRA r=16                 | LoRA r=16 (1 layer)    |
| connector               | linear projection                      | linear                    | linear                 |
| head                    | classification on the LM output        | MLP 256                   | MLP 64                 |
| gene readout (ours)     | none                                   | on, ridge 0.3, lr x10     | on, ridge 0.3, lr x10  |
| training data           | gene-only / paired / mixture 50:50     | mixture                   | mixture                |
| optimiser (run options) | AdamW                                  | engine: AdamW             | engine: AdamW          |

Conv or linear (``benchmarks/bench_rit.py``, 82 regions, 2 CPU cores shared with other jobs): the
same numbers (max difference 1e-4). At 16^3-24^3 crops the two are close and the order flips between
runs (``Conv3d`` up to ~3x faster in some, the linear map in others: noise at a few ms); at the
paper's 96^3 the linear map was 13-22x faster forward and 5-6.6x forward+backward in every run (the
convolution unfolds a 96^3 kernel). The linear map is kept: it wins clearly where the cost matters.

n/s: not stated in the paper summary we work from. The ``cpu`` preset writes one SNP per gene (its
most associated on the training split) in the compact text ``APOE: 0/1;`` (``snp_ids=False``, ~8
tokens a gene): the synthetic cohort's 39 genes all fit (311 tokens; with SNP ids ~13 a gene, they
would not fit MiniLM's 512 positions beside 83 region tokens), so the gene rankings of ``explain``
are not decided by which genes reach the text. When the text still exceeds the budget (a larger
panel), SNPs are kept by training-split association (strongest first, ``snps_per_gene`` per gene at
most): a cpu-sized stand-in for the paper's hand-picked 105-gene candidate panel.

``attribution`` (used by ``explain``, not in the paper) ranks genes and regions by what the fused
model's score owes to their content rather than by where attention flows: for the genes, gradient
x input of the SNP-text tokens against genotypes written 0/0; for the regions, integrated
gradients down to the **voxels** of the ROI crops against the cohort's mean crops, through RiT,
connector, language model and head (RiT's ViT mixes the region tokens, so the token at position r
after it is not region r's content: a token-level attribution there ranked the planted atrophy
regions at about the random rate); ``explain`` sums the voxels per atlas region.
``image_epochs``: stage 1 (RiT alone, cheap) may train longer than the fusion stage.

**Gene readout** (``gene_readout``, not in the paper; ``gene_readout=False`` is the paper's head
alone). With the pooled head alone, gene-only training did not learn genotypes at the cpu preset:
on a CN/AD cohort whose planted SNPs carry most of the liability (200 subjects, 5 causal genes of
0.8-1.2 SD per allele), the training loss stayed at 0.69 for 15 epochs at lr 1e-3, 3e-4 and 1e-4
(test balanced accuracy 0.50, where a logistic regression on the same SNPs reaches 0.75): one
language-model layer over frozen token embeddings must bind each genotype to its gene name through
attention, in a text whose gene order changes every step, and the mean over ~300 tokens dilutes
the few that matter. ``GeneReadout`` reads each gene where it is written: the mean of the LM's
output states over that gene's tokens, one shared direction (aimed, label-free, where the states
move from genotypes 0/0 to 1/1), standardised, then a ridge-penalised linear map over the genes,
added to the pooled head's logits; it learns at ``gene_lr_scale`` x the run's lr. The LM still
encodes the text and fuses it with the region tokens (attention, rollout and attribution go
through it). On that cohort it reaches test balanced accuracy 0.73 (AUC 0.80); in the known-answer
test (class = one gene's dosage) 0.85 training accuracy where the pooled head reaches 0.50.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from adfuse.config import LocalPath
from adfuse.errors import ConfigError
from adfuse.models.base import AdfuseModel, ModelConfig, Stage, trainable_prefixes
from adfuse.models.encoders import RoiEncoder, TokenEncoder, make_encoder
from adfuse.models.layers import genetic_prompt as gp
from adfuse.models.layers.heads import MLPHead
from adfuse.models.layers.pooling import masked_mean
from adfuse.models.registry import register
from adfuse.prepare import Batch, PrepareConfig


class RgenimaConfig(ModelConfig):
    dim: int = Field(64, ge=8)  # RiT token width
    vit_layers: int = Field(2, ge=0)
    vit_heads: int = Field(4, ge=1)
    roi_size: int | None = Field(16, ge=2, le=128)  # crop edge; None: the run's prepare.roi_size
    image_encoder: Literal["rit", "cnn"] = "rit"
    size: Literal["cpu", "paper"] = "cpu"  # widths of the CNN baseline
    maf_min: float = Field(0.05, ge=0, lt=0.5)
    hwe_p_min: float = Field(1e-6, ge=0, lt=1)
    snps_per_gene: int | None = Field(1, ge=1)  # None: every QC-passing SNP
    max_text_tokens: int | None = Field(384, ge=8)  # None: what the model's positions allow
    snp_ids: bool = True  # False: compact text "APOE: 0/1;" (every gene of a panel fits)
    permute_genes: bool = True  # gene-order permutation in training
    genetic_encoder: Literal["lm", "mlp"] = "lm"
    lm_path: LocalPath | None = None  # a local Hugging Face folder; None: the bundled MiniLM
    lm_layers: int | None = Field(1, ge=1)  # keep the first layers only; None: all
    lm_training: Literal["full", "lora", "frozen"] = "full"
    lora_rank: int = Field(16, ge=1)
    fusion: Literal["attention", "concat"] = "attention"
    training_data: Literal["mixture", "paired", "gene_only"] = "mixture"
    hidden: int = Field(64, ge=4)
    gene_readout: bool = True  # the head also reads each gene's own states (order-invariant)
    gene_ridge: float = Field(0.3, ge=0)  # ridge penalty on the gene readout's weights
    gene_lr_scale: float = Field(10.0, gt=0)  # the gene readout learns at this x the run's lr
    image_epochs: int | None = Field(None, ge=1)  # stage 1 (RiT, cheap); None: the run's epochs
    dropout: float = Field(0.1, ge=0, lt=1)


PRESETS = {
    "cpu": {
        "dim": 64,
        "vit_layers": 2,
        "vit_heads": 4,
        "roi_size": 16,
        "snps_per_gene": 1,
        "max_text_tokens": 384,
        "snp_ids": False,
        "lm_layers": 1,
        "lm_training": "lora",
    },
    "paper": {
        "dim": 256,
        "vit_layers": 4,
        "vit_heads": 8,
        "roi_size": 96,
        "size": "paper",
        "snps_per_gene": None,
        "max_text_tokens": None,
        "lm_layers": None,
        "lm_training": "lora",
        "hidden": 256,
    },
}


# ----------------------------------------------------------------------------- 1. RiT
class RiT(TokenEncoder):
    """ROI crops ``[B, R, s, s, s]`` -> one token per region (linear map of the whole crop = a 3D
    convolution with kernel s^3, + region embedding) -> a pre-norm ViT over the R tokens."""

    def __init__(self, input_shape, dim: int, layers: int, heads: int, dropout: float):
        super().__init__(input_shape[0], dim)
        if dim % heads:
            raise ConfigError(f"rgenima: dim {dim} is not a multiple of vit_heads {heads}")
        self.patch = RoiEncoder(tuple(input_shape), dim, dropout=dropout)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 2 * dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.vit = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.vit(self.patch(x)))


# ----------------------------------------------------------------------------- 3. the language model
class GeneReadout(nn.Module):
    """A penalised logistic regression on the language model's reading of each gene.

    Per gene, the mean of the LM's output states over that gene's tokens, read by one linear map
    shared by every gene to a number (its genotype as the model sees it), standardised over the
    subjects that have SNPs (batch statistics in training, running ones in evaluation), then a
    linear map of the genes' numbers in the panel's order to the outputs, with a ridge penalty
    (``penalty()``). The gene-order permutation moves a gene's block; the readout follows the gene,
    so it is order-invariant. Zero-initialised: training starts from the mean-pooled head alone; a
    subject without SNPs (no real gene token) gets zero.
    """

    def __init__(self, width: int, n_genes: int, out_dim: int, momentum: float = 0.1):
        super().__init__()
        self.n_genes, self.momentum = n_genes, momentum
        self.norm = nn.LayerNorm(width)
        self.direction = nn.Parameter(torch.randn(width) / width**0.5)
        self.combine = nn.Linear(n_genes, out_dim, bias=False)
        nn.init.zeros_(self.combine.weight)
        self.register_buffer("running_mean", torch.zeros(n_genes))
        self.register_buffer("running_var", torch.ones(n_genes))

    def gene_states(self, states, mask, gene) -> tuple[torch.Tensor, torch.Tensor]:
        """Per gene the layer-normalised mean of its tokens' states ``[B, genes, width]``, and
        whether the subject has that gene's tokens ``[B, genes]``."""
        member = nn.functional.one_hot(gene.clamp(min=0), self.n_genes).to(states.dtype)
        member = member * (mask & (gene >= 0))[..., None]  # [B, L, genes]
        count = member.sum(dim=1)
        per_gene = torch.einsum("blg,bld->bgd", member, states) / count.clamp(min=1)[..., None]
        return self.norm(per_gene), count > 0

    @torch.no_grad()
    def aim(self, states: torch.Tensor, mask: torch.Tensor, gene: torch.Tensor) -> None:
        """Point the reading direction where the genes' states move from subject 0 to subject 1
        of the batch (every genotype 0/0, then 1/1: label-free), averaged over the genes."""
        normed, here = self.gene_states(states, mask, gene)
        both = here[0] & here[1]
        shift = (normed[1] - normed[0])[both].mean(dim=0) if both.any() else None
        if shift is not None and float(shift.norm()) > 0:
            self.direction.copy_(shift / shift.norm())

    def forward(self, states: torch.Tensor, mask: torch.Tensor, gene: torch.Tensor) -> torch.Tensor:
        normed, here = self.gene_states(states, mask, gene)
        # a unit direction: the reading's scale stays put, so the running statistics keep up
        reading = normed @ (self.direction / self.direction.norm())  # [B, genes]
        subjects = here.any(dim=1)  # standardised over the subjects with SNPs only
        rows = reading[subjects]
        standard = torch.zeros_like(reading)
        standard[subjects] = nn.functional.batch_norm(
            rows,
            self.running_mean,
            self.running_var,
            training=self.training and len(rows) > 1,
            momentum=self.momentum,
        )
        return self.combine(torch.where(here, standard, 0.0))

    def penalty(self) -> torch.Tensor:
        return self.combine.weight.square().sum()


def load_lm(config: RgenimaConfig):
    """The language model (first ``lm_layers`` layers) and its tokenizer, from a local folder."""
    from adfuse.models.text import load_language_model, load_tokenizer

    lm = load_language_model(config.lm_path)
    tokenizer = load_tokenizer(config.lm_path)
    if getattr(lm, "pooler", None) is not None:  # BERT's pooler: unused (mean of the states)
        lm.pooler = None
    if config.lm_layers is not None and config.lm_layers < lm.config.num_hidden_layers:
        _truncate(lm, config.lm_layers)
    # the token embedding table stays as pretrained (a dense 30k x width gradient per step, and
    # the SNP text's tokens keep their meaning); the connector learns to speak to it
    lm.get_input_embeddings().requires_grad_(False)
    if config.lm_training == "frozen":
        lm.requires_grad_(False)
    elif config.lm_training == "lora":
        from peft import LoraConfig, get_peft_model

        names = {name.rsplit(".", 1)[-1] for name, _ in lm.named_modules()}
        targets = next(
            (pair for pair in (["query", "value"], ["q_proj", "v_proj"]) if set(pair) <= names),
            None,
        )
        if targets is None:
            raise ConfigError("rgenima: no query/value projections found for LoRA in the LM")
        lm = get_peft_model(lm, LoraConfig(r=config.lora_rank, target_modules=targets))
    return lm, tokenizer


def _truncate(lm: nn.Module, layers: int) -> None:
    """Keep the first ``layers`` blocks (the ModuleList holding ``num_hidden_layers`` of them)."""
    total = lm.config.num_hidden_layers
    for module in lm.modules():
        for name, child in module.named_children():
            if isinstance(child, nn.ModuleList) and len(child) == total:
                setattr(module, name, nn.ModuleList(list(child)[:layers]))
                lm.config.num_hidden_layers = layers
                if isinstance(getattr(lm.config, "layer_types", None), list):
                    lm.config.layer_types = lm.config.layer_types[:layers]
                return
    raise ConfigError("rgenima: could not find the language model's layers to truncate")


class RGenIMA(AdfuseModel):
    def __init__(self, spec, task, modalities, config: RgenimaConfig, prepare=None):
        super().__init__(spec, task, modalities, config, prepare)
        self.image_modality = "t1" if "t1" in self.modalities else None
        self.genetic = "genotype" in self.modalities
        self._fitted_on: list[str] = []  # subjects of the SNP QC (none without genotypes)
        self._qc_counts: dict = {}
        with torch.random.fork_rng(devices=[]):  # LoRA's draws leave the rest's init unchanged
            self.lm, tokenizer = load_lm(config)
        width = int(self.lm.config.hidden_size)
        self.start_id = tokenizer.cls_token_id
        if self.start_id is None:
            self.start_id = tokenizer.bos_token_id
        if self.start_id is None:
            self.start_id = tokenizer.pad_token_id
        self.end_id = tokenizer.sep_token_id
        n_image_tokens = 0
        if self.image_modality:
            shape = self.input_shape(self.image_modality)
            if config.image_encoder == "rit":
                self.image_encoder = RiT(
                    shape, config.dim, config.vit_layers, config.vit_heads, config.dropout
                )
            else:
                t1 = spec[self.image_modality]
                self.image_encoder = make_encoder(t1, "volume", shape, config.dim, config.size)
            n_image_tokens = self.image_encoder.n_tokens
            self.image_head = MLPHead(config.dim, config.hidden, self.out_dim, config.dropout)
            self.connector = nn.Linear(config.dim, width)
        self.gene_head: GeneReadout | None = None
        if self.genetic:
            self._init_genetics(spec["genotype"], tokenizer, width, n_image_tokens)
        if config.fusion == "concat":
            self.absent = nn.ParameterDict(
                {
                    "image": nn.Parameter(torch.zeros(width)),
                    "genetic": nn.Parameter(torch.zeros(width)),
                }
            )
        head_width = 2 * width if config.fusion == "concat" else width
        self.head = MLPHead(head_width, config.hidden, self.out_dim, config.dropout)
        self._stages = self._declare_stages()
        self._last: dict = {}
        self.phase: str | None = None  # set by the engine through begin_stage

    # ------------------------------------------------------------------ 2. genetic prompting
    def _init_genetics(self, genotype, tokenizer, width: int, n_image_tokens: int) -> None:
        config = self.config
        snps = genotype.feature_names
        self.members = gp.gene_groups(snps, genotype.groups)
        self.gene_names = list(genotype.groups)[: len(self.members)]
        if len(self.gene_names) < len(self.members):
            self.gene_names.append("unannotated")
        n_snps = len(snps)
        for name, value in (("snp_mean", 0.0), ("snp_scale", 1.0), ("snp_score", 0.0)):
            self.register_buffer(name, torch.full((n_snps,), value))
        self.register_buffer("snp_maf", torch.full((n_snps,), float("nan")))
        self.register_buffer("snp_hwe_p", torch.full((n_snps,), float("nan")))
        if config.genetic_encoder == "lm":
            self.prompt = gp.GeneticPrompt(
                tokenizer, self.gene_names, snps, self.members, snp_ids=config.snp_ids
            )
            positions = getattr(self.lm.config, "max_position_embeddings", None) or 10**9
            self.text_budget = min(config.max_text_tokens or 10**9, positions - n_image_tokens - 2)
            keep = gp.choose_snps(
                self.prompt,
                np.ones(n_snps, bool),
                np.zeros(n_snps),
                config.snps_per_gene,
                self.text_budget,
            )
        else:
            keep = self._strongest(np.ones(n_snps, bool), np.zeros(n_snps))
            membership = torch.zeros(len(self.members), n_snps)
            for gene, indices in enumerate(self.members):
                membership[gene, indices] = 1.0
            self.register_buffer("membership", membership, persistent=False)
            self.snp_embedding = nn.Parameter(
                nn.init.trunc_normal_(torch.empty(n_snps, width), std=0.02)
            )
            self.gene_embedding = nn.Parameter(
                nn.init.trunc_normal_(torch.empty(len(self.members), width), std=0.02)
            )
            self.snp_mlp = nn.Sequential(nn.LayerNorm(width), nn.GELU(), nn.Linear(width, width))
        self.register_buffer("snp_keep", torch.from_numpy(keep))
        self.gene_head = (
            GeneReadout(width, len(self.members), self.out_dim) if config.gene_readout else None
        )

    def fit_statistics(self, train) -> None:
        """SNP QC and SNP choice on the training split (called by the engine before training, with
        the prepared training dataset); the result lives in buffers saved with the weights."""
        if not self.genetic:
            return
        scaler = train.preprocessor.scalers["genotype"]
        self.snp_mean.copy_(torch.as_tensor(scaler.mean, dtype=self.snp_mean.dtype))
        self.snp_scale.copy_(torch.as_tensor(scaler.scale, dtype=self.snp_scale.dtype))
        batch = train.batch()
        present = batch.present["genotype"]
        codes = gp.genotype_codes(batch.inputs["genotype"][present], self.snp_mean, self.snp_scale)
        dosages = torch.where(codes == gp.MISSING, float("nan"), codes.double()).numpy()
        qc = gp.snp_qc(dosages, self.config.maf_min, self.config.hwe_p_min)
        target = batch.target[present].numpy()
        labelled = np.isfinite(target) & (
            target >= 0 if self.task_kind == "classification" else True
        )
        scores = gp.association_scores(
            dosages[labelled], target[labelled], self.task_kind == "classification"
        )
        if self.config.genetic_encoder == "lm":
            keep = gp.choose_snps(
                self.prompt, qc.keep, scores, self.config.snps_per_gene, self.text_budget
            )
        else:
            keep = self._strongest(qc.keep, scores)
        self.snp_maf.copy_(torch.from_numpy(qc.maf))
        self.snp_hwe_p.copy_(torch.from_numpy(qc.hwe_p))
        self.snp_score.copy_(torch.from_numpy(scores))
        self.snp_keep.copy_(torch.from_numpy(keep))
        self._fitted_on = [i for i, here in zip(batch.ids, present.tolist(), strict=True) if here]
        self._qc_counts = qc.counts()
        self._aim_gene_readout()

    @torch.no_grad()
    def _aim_gene_readout(self) -> None:
        """Start the gene readout on the direction in which a gene's LM states move from genotype
        0/0 to 1/1 (two made-up subjects, no label), so that it reads genotypes from the first
        step instead of finding that direction among ``width`` while the weights behind it grow
        from zero."""
        if self.gene_head is None:
            return
        n_snps = len(self.snp_keep)
        codes = torch.tensor([[0.0], [2.0]]).expand(2, n_snps)
        standard = ((codes - self.snp_mean.cpu()) / self.snp_scale.cpu()).float()
        device = self.snp_keep.device
        present = torch.ones(2, dtype=torch.bool, device=device)
        batch = Batch(
            {"genotype": standard.to(device)},
            {"genotype": present},
            torch.zeros(2, dtype=torch.long, device=device),
            ["0/0", "1/1"],
        )
        training = self.training
        self.eval()
        embeddings, mask, _, gene = self.sequence(batch, None, None, present)
        self.gene_head.aim(self.encode(embeddings, mask).last_hidden_state, mask, gene)
        self.train(training)

    def _strongest(self, passing: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """The MLP's SNPs: per gene its ``snps_per_gene`` most associated QC-passing ones, the
        SNPs the text would list (no token budget), so that the two encoders see the same SNPs."""
        keep = np.zeros(len(passing), dtype=bool)
        for snps in gp.strongest_per_gene(self.members, passing, scores, self.config.snps_per_gene):
            keep[snps] = True
        return keep

    def fitted_on(self) -> dict[str, list[str]]:
        return {"rgenima SNP QC": self._fitted_on}

    def statistics_report(self) -> dict:
        """QC counts and the SNPs written in the text (for the run folder)."""
        if not self.genetic:
            return {}
        keep = self.snp_keep.numpy()
        genes = [self.gene_names[g] for g, m in enumerate(self.members) if keep[m].any()]
        report = {
            "snp_qc": {
                "maf_min": self.config.maf_min,
                "hwe_p_min": self.config.hwe_p_min,
                "fitted_on_subjects": len(self._fitted_on),
                **self._qc_counts,
            },
            "snps_used": int(keep.sum()),
            "genes_used": genes,
        }
        if self.config.genetic_encoder == "lm":
            self.prompt.build(keep)
            report["text_tokens"] = self.prompt.length
            report["text_budget"] = int(self.text_budget)
        return report

    def genetic_tokens(self, batch, reference: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, T, width]`` input embeddings of the SNP text (or of the MLP's gene tokens) and the
        gene index of every token ``[B, T]``; ``reference``: every genotype written as 0/0 (the
        baseline of the attribution, same layout)."""
        codes = gp.genotype_codes(batch.inputs["genotype"], self.snp_mean, self.snp_scale)
        if reference:
            codes = torch.zeros_like(codes)
        keep = self.snp_keep
        if self.config.genetic_encoder == "mlp":
            dosage = torch.where(codes == gp.MISSING, 0, codes).to(self.snp_embedding.dtype)
            dosage = dosage * keep.to(dosage.dtype)
            per_gene = torch.einsum("bs,gs,sw->bgw", dosage, self.membership, self.snp_embedding)
            tokens = self.snp_mlp(per_gene + self.gene_embedding)
            genes = torch.arange(len(self.members), device=tokens.device).expand(len(codes), -1)
            return tokens, genes
        self.prompt.build(keep.cpu().numpy())
        orders = None
        if self.training and self.config.permute_genes:
            n_blocks = len(self.prompt.blocks)
            orders = [torch.randperm(n_blocks).tolist() for _ in range(len(codes))]
        ids, genes = self.prompt.ids(codes, orders)
        return self._embed(ids), genes

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self._base_lm().get_input_embeddings()(ids)

    def _base_lm(self) -> nn.Module:
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    # ------------------------------------------------------------------ 1. image tokens
    def views(self) -> dict[str, str]:
        if self.image_modality is None:
            return {}
        return {self.image_modality: "roi" if self.config.image_encoder == "rit" else "volume"}

    def image_tokens(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        modality = self.image_modality
        present = batch.present[modality]
        return self.image_encoder.encode(batch.inputs[modality], present), present

    def begin_stage(self, stage: Stage | None, fresh: bool = True) -> None:
        """In stage 1 the output is the image head's (so its validation picks the best RiT)."""
        self.phase = stage.name if stage is not None else None

    def _image_stage(self) -> bool:
        return self.image_modality is not None and self.phase == "image"

    # ------------------------------------------------------------------ 3. fusion
    def sequence(
        self, batch, image_tokens, image_present, genetic_present, reference=False, detach=True
    ):
        """Input embeddings ``[B, L, width]`` of ``start, regions, SNP text, end`` with the absent
        parts left out (real tokens first, then padding), the mask, and per token its region index
        and gene index (-1 where it is neither). ``reference``: genotypes written as 0/0.
        ``detach``: the region tokens are cut from RiT's graph (RiT is frozen after stage 1);
        ``attribution`` keeps them attached to differentiate down to the voxels."""
        n = len(batch.ids)
        device = batch.target.device
        special = torch.tensor([self.start_id], device=device).expand(n, 1)
        parts = [self._embed(special)]
        masks = [torch.ones(n, 1, dtype=torch.bool, device=device)]
        regions, genes = (
            [torch.full((n, 1), -1, device=device)],
            [torch.full((n, 1), -1, device=device)],
        )
        if image_tokens is not None:
            count = image_tokens.shape[1]
            parts.append(self.connector(image_tokens.detach() if detach else image_tokens))
            masks.append(image_present[:, None].expand(n, count))
            regions.append(torch.arange(count, device=device).expand(n, -1))
            genes.append(torch.full((n, count), -1, device=device))
        if genetic_present is not None:
            text, gene_index = self.genetic_tokens(batch, reference)
            parts.append(text.to(parts[0].dtype))
            masks.append(genetic_present[:, None].expand(n, text.shape[1]))
            regions.append(torch.full(gene_index.shape, -1, device=device))
            genes.append(gene_index)
        if self.end_id is not None:
            parts.append(self._embed(torch.tensor([self.end_id], device=device).expand(n, 1)))
            masks.append(torch.ones(n, 1, dtype=torch.bool, device=device))
            regions.append(torch.full((n, 1), -1, device=device))
            genes.append(torch.full((n, 1), -1, device=device))
        embeddings, mask = torch.cat(parts, 1), torch.cat(masks, 1)
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
        length = int(mask.sum(1).max())
        order = order[:, :length]
        embeddings = embeddings.gather(1, order[..., None].expand(-1, -1, embeddings.shape[2]))
        return (
            embeddings,
            mask.gather(1, order),
            torch.cat(regions, 1).gather(1, order),
            torch.cat(genes, 1).gather(1, order),
        )

    def encode(self, embeddings, mask, output_attentions: bool = False):
        return self.lm(
            inputs_embeds=embeddings,
            attention_mask=mask.long(),
            output_attentions=output_attentions,
        )

    def _training_view(self, batch, image_present, genetic_present):
        """Which subjects the loss counts in training, and T1 withheld for ``mixture``."""
        n = len(batch.ids)
        everyone = torch.ones(n, dtype=torch.bool, device=batch.target.device)
        if not self.training:
            return image_present, everyone
        has_image = image_present if image_present is not None else ~everyone
        has_genes = genetic_present if genetic_present is not None else ~everyone
        if self.config.training_data == "paired":
            return image_present, has_image & has_genes
        counted = has_genes
        if self.config.training_data == "mixture" and image_present is not None:
            paired = (has_image & has_genes).nonzero().squeeze(1)
            snp_only = int((has_genes & ~has_image).sum())
            withhold = round(0.5 * int(counted.sum())) - snp_only
            if withhold > 0 and len(paired):
                chosen = paired[torch.randperm(len(paired))[:withhold].to(paired.device)]
                image_present = image_present.clone()
                image_present[chosen] = False
        return image_present, counted

    def forward(self, batch) -> torch.Tensor:
        image_tokens = image_present = None
        if self.image_modality:
            image_tokens, image_present = self.image_tokens(batch)
            image_logits = self.image_head(image_tokens.mean(dim=1))
            if self._image_stage():
                # subjects without T1 get uniform logits; the stage's loss does not count them
                out = torch.where(image_present[:, None], image_logits, 0.0)
                self._last = {"ids": list(batch.ids), "counted": image_present}
                return self.format_output(out)
        genetic_present = batch.present["genotype"] if self.genetic else None
        image_present, counted = self._training_view(batch, image_present, genetic_present)
        if self.config.fusion == "concat":
            out = self._late_fusion(batch, image_tokens, image_present, genetic_present)
        else:
            embeddings, mask, _, gene = self.sequence(
                batch, image_tokens, image_present, genetic_present
            )
            out = self.readout(self.encode(embeddings, mask).last_hidden_state, mask, gene)
        self._last = {"ids": list(batch.ids), "counted": counted}
        if self.image_modality:
            self._last |= {
                "image_logits": image_logits,
                "image_present": batch.present[self.image_modality],
            }
        return self.format_output(out)

    def readout(self, states: torch.Tensor, mask: torch.Tensor, gene: torch.Tensor) -> torch.Tensor:
        """The outputs from the LM's states ``[B, L, width]``: the head on their mean, plus (with
        ``gene_readout``) the gene readout on each gene's own states (``gene`` per token)."""
        out = self.head(masked_mean(states, mask))
        if self.gene_head is not None:
            out = out + self.gene_head(states, mask, gene)
        return out

    def _late_fusion(self, batch, image_tokens, image_present, genetic_present) -> torch.Tensor:
        """The concat baseline: pooled region tokens beside the LM's pooled SNP-text states (and
        the gene readout on the text's states)."""
        n = len(batch.ids)
        slots = []
        absent_image = self.absent["image"].expand(n, -1)
        if image_tokens is not None:
            image = self.connector(image_tokens.detach().mean(dim=1))
            slots.append(torch.where(image_present[:, None], image, absent_image))
        else:
            slots.append(absent_image)
        absent_genes = self.absent["genetic"].expand(n, -1)
        genes = 0.0
        if genetic_present is not None:
            embeddings, mask, _, gene = self.sequence(batch, None, None, genetic_present)
            states = self.encode(embeddings, mask).last_hidden_state
            text = masked_mean(states, mask)
            slots.append(torch.where(genetic_present[:, None], text, absent_genes))
            if self.gene_head is not None:
                genes = self.gene_head(states, mask, gene)
        else:
            slots.append(absent_genes)
        return self.head(torch.cat(slots, dim=1)) + genes

    # ------------------------------------------------------------------ training
    def _masked_loss(self, out: torch.Tensor, target: torch.Tensor, counted: torch.Tensor):
        if not counted.any():
            return out.sum() * 0.0
        if self.task_kind == "classification":
            weight = getattr(self, "class_weight", None)
            return nn.functional.cross_entropy(out[counted], target[counted], weight=weight)
        return nn.functional.mse_loss(out[counted], target[counted].float())

    def loss(self, batch, out: torch.Tensor) -> torch.Tensor:
        """Task loss over the subjects the training configuration counts; while the image encoder
        trains together with the rest (never in the two-stage schedule), plus its own head's loss."""
        if self._last.get("ids") != list(batch.ids):
            self(batch)
        total = self._masked_loss(out, batch.target, self._last["counted"])
        if self.gene_head is not None and self.gene_head.combine.weight.requires_grad:
            total = total + self.config.gene_ridge * self.gene_head.penalty()
        if "image_logits" in self._last and any(
            p.requires_grad for p in self.image_encoder.parameters()
        ):
            logits = self.format_output(self._last["image_logits"])
            total = total + self._masked_loss(logits, batch.target, self._last["image_present"])
        return total

    def _declare_stages(self) -> list[Stage]:
        image_parts = ("image_encoder", "image_head")
        fusion: list[str] = []
        for name, child in self.named_children():
            if name in image_parts or not any(p.requires_grad for p in child.parameters()):
                continue
            fusion += trainable_prefixes(child, f"{name}.")
        fusion += [
            n
            for n, p in self.named_parameters(recurse=False)
            if n not in image_parts and p.requires_grad
        ]
        stages = [Stage("image", tuple(f"{p}." for p in image_parts), self.config.image_epochs)]
        fast = (("gene_head.", self.config.gene_lr_scale),) if self.gene_head is not None else ()
        return [
            *(stages if self.image_modality else []),
            Stage("fusion", tuple(fusion), lr_scale=fast),
        ]

    def stages(self) -> list[Stage]:
        """Stage 1 "image": RiT (or the CNN) and its head on the task. Stage 2 "fusion": connector,
        language model (LoRA adapters only with ``lm_training="lora"``) and head; RiT frozen."""
        return list(self._stages)

    def train(self, mode: bool = True) -> RGenIMA:
        super().train(mode)
        if self.config.lm_training == "frozen":
            self.lm.eval()
        return self

    # ------------------------------------------------------------------ interpretation
    @torch.no_grad()
    def attention_layout(self, batch) -> dict:
        """Eval-mode attentions of every LM layer for a batch (eager attention for this call) and
        the token layout: ``attentions`` (list of ``[B, heads, L, L]``), ``mask``, ``region`` and
        ``gene`` (per token its index, -1 otherwise)."""
        if self.config.fusion != "attention":
            raise ConfigError("rgenima explain: fusion='concat' has no cross-modal attention")
        self.eval()
        image_tokens = image_present = None
        if self.image_modality:
            image_tokens, image_present = self.image_tokens(batch)
        genetic_present = batch.present["genotype"] if self.genetic else None
        embeddings, mask, region, gene = self.sequence(
            batch, image_tokens, image_present, genetic_present
        )
        base = self._base_lm()
        previous = base.config._attn_implementation
        base.set_attn_implementation("eager")
        try:
            out = self.encode(embeddings, mask, output_attentions=True)
        finally:
            base.set_attn_implementation(previous)
        return {"attentions": list(out.attentions), "mask": mask, "region": region, "gene": gene}

    def attribution(self, batch, crop_baseline: torch.Tensor, steps: int = 0) -> dict:
        """What the fused model's score owes to each input, against a reference input:

        - genes: gradient x input of every token of the SNP text against the text with every
          genotype written 0/0 (the gene and SNP tokens cancel, only the subject's genotypes
          count), the first-order term of an occlusion;
        - regions: every **voxel** of the ROI crops against ``crop_baseline [R, s, s, s]`` (the
          cohort's mean crops), the gradient taken through RiT (its ViT mixes the region tokens,
          so the token at position r is not region r's content alone), the connector, the
          language model and the head; only this call keeps the region tokens attached to RiT.
          ``steps=0``: gradient x input (the gradient at the crops); ``steps=k``: integrated
          gradients (Sundararajan et al. 2017), the gradient averaged over k midpoints
          (j - 1/2) / k of the straight path from the baseline to the crops, which sums to the
          change of the score along that path where a single gradient is only its first-order
          estimate (k + 1 passes through the model in all).

        The score differentiated is the subject's class logit minus the mean logit (not the
        log-probability, which saturates on confident subjects) or the prediction (regression).
        Returns ``contribution [B, L]`` (per token, summed over the embedding; zero on the region
        tokens, whose part is in ``crops``), ``crops [B, R, s, s, s]`` (per voxel) and ``mask``,
        ``region`` and ``gene`` as in ``attention_layout``."""
        if self.config.fusion != "attention" or self.config.image_encoder != "rit":
            raise ConfigError("rgenima attribution: needs RiT and cross-modal attention fusion")
        if steps < 0:
            raise ConfigError(f"rgenima attribution: steps must be 0 or more (got {steps})")
        self.eval()
        modality = self.image_modality
        image_present = batch.present[modality]
        genetic_present = batch.present["genotype"]
        crops = batch.inputs[modality].detach().float()
        baseline = crop_baseline.to(crops)
        crop_gradient = torch.zeros_like(crops)
        path = [(j - 0.5) / steps for j in range(1, steps + 1)]
        for number, position in enumerate([1.0, *path]):  # the crops themselves first
            point = (baseline + position * (crops - baseline)).requires_grad_(True)
            with torch.enable_grad():
                image_tokens = self.image_encoder.encode(point, image_present)
                embeddings, mask, region, gene = self.sequence(
                    batch, image_tokens, image_present, genetic_present, detach=False
                )
                if not embeddings.requires_grad:  # nothing trainable upstream (a frozen model)
                    embeddings.requires_grad_(True)
                states = self.encode(embeddings, mask).last_hidden_state
                score = self._score(self.readout(states, mask, gene), batch.target)
                token_gradient, point_gradient = torch.autograd.grad(
                    score.sum(), (embeddings, point), allow_unused=True
                )
            if number == 0:
                with torch.no_grad():
                    reference, *_ = self.sequence(
                        batch, image_tokens.detach(), image_present, genetic_present, reference=True
                    )
                contribution = (token_gradient * (embeddings.detach() - reference)).sum(dim=-1)
            if point_gradient is not None and (number > 0 or steps == 0):  # None: no T1
                crop_gradient += point_gradient / max(steps, 1)
        present = image_present.to(crops.dtype).reshape(-1, *[1] * (crops.dim() - 1))
        return {
            "contribution": contribution * mask,
            "crops": crop_gradient * (crops - baseline) * present,
            "mask": mask,
            "region": region,
            "gene": gene,
        }

    def _score(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per subject: its class logit minus the mean logit, or the prediction (regression)."""
        if self.task_kind == "classification":
            chosen = target.clamp(min=0)[:, None]
            return (out - out.mean(dim=-1, keepdim=True)).gather(1, chosen).squeeze(1)
        return out.reshape(len(out), -1).sum(dim=1)


@register(
    "rgenima",
    config=RgenimaConfig,
    presets=PRESETS,
    paper="arXiv 2512.18986",
    accepts=("genotype", "t1"),
    description="R-GenIMA: ROI tokens (RiT) + SNPs as text through one language model",
)
def rgenima(spec, task, modalities, config, prepare):
    """Build R-GenIMA; ``roi_size`` sets the prepared crops; gene-only training drops T1."""
    if config.roi_size is not None:
        prepare = (prepare or PrepareConfig()).model_copy(update={"roi_size": config.roi_size})
    if config.training_data == "gene_only":
        if "genotype" not in modalities:
            raise ConfigError("rgenima: training_data='gene_only' needs the genotype modality")
        modalities = ["genotype"]
    return RGenIMA(spec, task, modalities, config, prepare)
