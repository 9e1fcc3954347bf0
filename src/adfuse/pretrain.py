"""``adfuse pretrain``: self-supervised masked-token pre-training of a uni-modal foundation encoder.

The stand-in for BrainMVP / Brain-JEPA / the Nucleotide Transformer, which cannot be downloaded
here: a ``models/foundation.py`` encoder (sMRI ViT, fMRI window transformer, genetics gene-token
transformer) learns to reconstruct the raw content of masked tokens (SimMIM-style: a learned mask
token replaces ``mask_ratio`` of the input tokens, a linear decoder predicts their patches, mean
squared error over the masked, real entries). Labels are never read.

Leak-free by default: the subjects pre-trained on are those with the modality **minus the test
split of seed ``seed`` of every task the cohort supports** (``exclude_test=True``), so a later
``adfuse train --seed <same seed>`` never evaluates on a subject the encoder has seen.
``exclude_test=False`` uses every subject with the modality (test subjects included, as a
foundation model trained on a public cohort would be; the encoder's config.json says which).
Fitted statistics (SNP imputation) are fitted on the pre-training subjects only.

The result is a folder (``config.json`` + ``model.safetensors``, written atomically) that the
``anchored`` model loads through ``smri_encoder=`` / ``fmri_encoder=`` / ``genetics_encoder=``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, ValidationError

from adfuse.config import StrictModel, pydantic_message
from adfuse.errors import AdfuseError, ConfigError
from adfuse.prepare import PrepareConfig

VIEWS = {"t1": "volume", "fmri": "series"}


class PretrainConfig(StrictModel):
    modality: Literal["smri", "fmri", "genetics"]
    seed: int = Field(0, ge=0)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(16, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    mask_ratio: float = Field(0.5, gt=0, lt=1)
    exclude_test: bool = True
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    # the encoder (the anchored model's cpu preset by default)
    width: int = Field(64, ge=8)
    depth: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(2.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    patch: int = Field(8, ge=1)
    window: int = Field(10, ge=1)
    snps_per_token: int = Field(32, ge=1)
    prepare: PrepareConfig = Field(default_factory=PrepareConfig)

    @classmethod
    def build(cls, **values) -> PretrainConfig:
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            raise ConfigError(pydantic_message(error, "pretrain config")) from None


def pretraining_subjects(cohort, modality: str, config: PretrainConfig) -> tuple[list[str], dict]:
    """Subjects with the modality, minus every task's test split of ``config.seed`` (if asked)."""
    from adfuse import splits, tasks

    available = cohort.availability
    have = sorted(available.index[available[modality].to_numpy(dtype=bool)])
    excluded: set[str] = set()
    used_tasks = []
    if config.exclude_test:
        for name in tasks.available():
            try:
                split = splits.subject_split(
                    cohort, name, seed=config.seed, fractions=config.split_fractions
                )
            except AdfuseError:
                continue  # a task the cohort cannot support has no test split to protect
            excluded |= set(split.test)
            used_tasks.append(name)
    ids = [s for s in have if s not in excluded]
    provenance = {
        "subjects_with_modality": len(have),
        "subjects_used": len(ids),
        "test_subjects_excluded": len(set(have) & excluded),
        "exclude_test": config.exclude_test,
        "excluded_test_splits_of": used_tasks,
        "split_seed": config.seed,
        "split_fractions": list(config.split_fractions),
    }
    return ids, provenance


def pretrain(
    dataset: str | Path,
    config: PretrainConfig,
    out: str | Path,
    *,
    force: bool = False,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Pre-train a ``config.modality`` encoder on ``dataset`` and save it into ``out``."""
    import torch
    from tqdm.auto import tqdm

    from adfuse import tasks
    from adfuse.data.cohort import load_cohort
    from adfuse.io import is_nonempty_dir
    from adfuse.models.foundation import (
        GROUPS,
        EncoderConfig,
        MaskedTokenModel,
        build_encoder,
        gene_token_groups,
        save_encoder,
    )
    from adfuse.prepare import CohortDataset, Preprocessor, default_cache_dir, input_shape

    out = Path(out)
    if is_nonempty_dir(out) and not force:
        raise ConfigError(f"{out}: folder is not empty; pass --force to replace it")
    cohort = load_cohort(dataset)
    modality = GROUPS[config.modality][0]
    if modality not in cohort.spec:
        raise ConfigError(
            f"{cohort.root}: no {modality} data to pre-train a {config.modality} encoder"
        )
    ids, provenance = pretraining_subjects(cohort, modality, config)
    if len(ids) < config.batch_size:
        raise ConfigError(
            f"{cohort.root}: {len(ids)} subjects with {modality} left for pre-training "
            f"(fewer than a batch of {config.batch_size})"
        )
    prepare = config.prepare.model_copy(
        update={
            "views": {**config.prepare.views, **{k: v for k, v in VIEWS.items() if k == modality}}
        }
    )
    spec = cohort.spec[modality]
    shape = input_shape(spec, prepare.views.get(modality), prepare)
    preprocessor = Preprocessor.fit(cohort, [modality], ids)
    data = CohortDataset(
        cohort,
        tasks.get("diagnosis"),  # targets are never read; labelled=False keeps every subject
        ids,
        [modality],
        preprocessor,
        prepare,
        Path(cache_dir) if cache_dir else default_cache_dir(),
        labelled=False,
    ).batch()
    inputs = data.inputs[modality].float()
    torch.manual_seed(config.seed)
    encoder_config = EncoderConfig(
        group=config.modality,
        input_shape=shape,
        width=config.width,
        depth=config.depth,
        heads=config.heads,
        mlp_ratio=config.mlp_ratio,
        dropout=config.dropout,
        patch=config.patch,
        window=config.window,
        snps_per_token=config.snps_per_token,
        token_groups=gene_token_groups(spec, config.snps_per_token)
        if config.modality == "genetics"
        else [],
    )
    model = MaskedTokenModel(build_encoder(encoder_config))
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    steps = config.epochs * math.ceil(len(ids) / config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=steps, pct_start=0.1
    )
    n_tokens = model.encoder.n_tokens
    n_masked = max(1, round(config.mask_ratio * n_tokens))
    history, started = [], time.perf_counter()
    model.train()
    for epoch in tqdm(
        range(config.epochs), desc=f"pretrain {config.modality}", disable=not progress
    ):
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        order = torch.randperm(len(ids), generator=generator)
        losses = []
        for start in range(0, len(order), config.batch_size):
            index = order[start : start + config.batch_size]
            if len(index) < 2:
                continue
            ranks = torch.rand(len(index), n_tokens, generator=generator).argsort(dim=1)
            masked = ranks < n_masked  # exactly n_masked random tokens per sample
            optimizer.zero_grad(set_to_none=True)
            loss = model.loss(inputs[index], masked)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        history.append({"epoch": epoch, "reconstruction_loss": float(np.mean(losses))})
    info = {
        "pretraining": {
            "method": "masked-token reconstruction (SimMIM-style), labels unused",
            "dataset": str(cohort.root),
            "fingerprint": cohort.fingerprint(),
            "modality": modality,
            "prepare": prepare.model_dump(mode="json"),
            **provenance,
            "config": config.model_dump(mode="json", exclude={"prepare"}),
            "seconds": round(time.perf_counter() - started, 2),
            "history": history,
        }
    }
    return save_encoder(model.encoder, out, info, force=force)
