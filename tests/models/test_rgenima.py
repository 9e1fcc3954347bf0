"""R-GenIMA's mechanisms: SNP QC, SNP text, gene-order permutation, RiT, stages, absent modalities,
a tiny Llama through a local path. (Rollout, stability and planted truth: tests/unit/test_rollout.py.)"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from adfuse import models
from adfuse.data.cohort import ModalitySpec
from adfuse.errors import ConfigError
from adfuse.models.layers import genetic_prompt as gp
from adfuse.prepare import Batch, PrepareConfig
from tests.models.conftest import make_spec, random_batch

SNPS = ("rs429358", "rs7412", "rs744373", "rs11136000", "rs3851179", "rs6656401")
GROUPS = {
    "APOE": ("rs429358", "rs7412"),
    "BIN1": ("rs744373",),
    "CLU": ("rs11136000",),
    "PICALM": ("rs3851179",),
    "CR1": ("rs6656401",),
}
PREPARE = PrepareConfig(roi_size=4)


def spec_with_genes() -> dict[str, ModalitySpec]:
    spec = make_spec()
    spec["genotype"] = ModalitySpec("genotype", "genotype", (len(SNPS),), SNPS, groups=GROUPS)
    return {m: spec[m] for m in ("genotype", "t1")}


def build(task: str = "diagnosis", seed: int = 0, **overrides) -> models.base.AdfuseModel:
    torch.manual_seed(seed)
    settings = {"roi_size": 4, "dim": 16, "max_text_tokens": 200, "snps_per_gene": None}
    return models.create(
        "rgenima", spec_with_genes(), task, prepare=PREPARE, **(settings | overrides)
    )


# ----------------------------------------------------------------------------- SNP QC
def hwe_by_enumeration(n_het: int, n_hom1: int, n_hom2: int) -> float:
    """The exact test from its definition: P(het | n, rare allele count) for every het count."""
    n = n_het + n_hom1 + n_hom2
    rare = 2 * min(n_hom1, n_hom2) + n_het

    def probability(het: int) -> float:
        hom_rare, hom_common = (rare - het) // 2, n - het - (rare - het) // 2
        ways = math.factorial(n) / (
            math.factorial(hom_rare) * math.factorial(het) * math.factorial(hom_common)
        )
        return (
            ways
            * 2**het
            * math.factorial(rare)
            * math.factorial(2 * n - rare)
            / math.factorial(2 * n)
        )

    values = [probability(h) for h in range(rare % 2, min(rare, 2 * n - rare) + 1, 2)]
    observed = probability(n_het)
    return sum(v for v in values if v <= observed * (1 + 1e-9))


def test_hwe_exact_test_against_hand_computed_values():
    # one AA and one BB, no heterozygote: P(het=0) = 1/3, P(het=2) = 2/3 (by hand)
    assert gp.hwe_exact_p(0, 1, 1) == pytest.approx(1 / 3)
    assert gp.hwe_exact_p(2, 0, 0) == pytest.approx(1.0)
    for counts in [(1, 8, 1), (5, 3, 2), (0, 10, 10), (12, 30, 8), (3, 0, 40)]:
        assert gp.hwe_exact_p(*counts) == pytest.approx(hwe_by_enumeration(*counts), rel=1e-9)


def test_snp_qc_maf_and_hwe_thresholds():
    nan = np.nan
    balanced = [0.0] * 25 + [1.0] * 50 + [2.0] * 25  # p = 0.5, in equilibrium
    dosages = np.array(
        [
            balanced,
            [0.0] * 96 + [1.0] * 4,  # MAF = 4 / 200 = 0.02: fails MAF
            [0.0] * 50 + [2.0] * 50,  # no heterozygote at p = 0.5: fails HWE
            [2.0] * 100,  # monomorphic for allele 1: MAF 0
            [0.0, 1.0, 2.0, nan] + balanced[4:],  # a missing call is not counted
        ]
    ).T
    qc = gp.snp_qc(dosages, maf_min=0.05, hwe_p_min=1e-6)
    assert qc.maf[:4] == pytest.approx([0.5, 0.02, 0.5, 0.0])
    assert qc.called.tolist() == [100, 100, 100, 100, 99]
    assert qc.hwe_p[2] < 1e-20 and qc.hwe_p[0] > 0.5
    assert qc.keep.tolist() == [True, False, False, False, True]
    assert qc.counts() == {"snps": 5, "fail_maf": 2, "fail_hwe": 1, "fail_both": 0, "pass": 2}


def test_genotype_codes_invert_the_standardisation_and_find_imputed_calls():
    mean, scale = torch.tensor([0.5, 1.2]), torch.tensor([0.5, 0.8])
    dosage = torch.tensor([[0.0, 2.0], [1.0, 1.0], [0.5, 0.0]])  # last row: SNP 0 imputed (= mean)
    z = (dosage - mean) / scale
    z[2, 0] = 0.0
    assert gp.genotype_codes(z, mean, scale).tolist() == [[0, 2], [1, 1], [gp.MISSING, 0]]


# ----------------------------------------------------------------------------- SNP text
def test_serialisation_format():
    text = gp.serialise([("APOE", [("rs429358", 1), ("rs7412", 0)]), ("BIN1", [("rs744373", 3)])])
    assert text == "APOE: rs429358 0/1, rs7412 0/0; BIN1: rs744373 ./.;"


def test_compact_serialisation_without_snp_ids_is_the_tokenised_text():
    from adfuse.models.text import load_tokenizer

    text = gp.serialise([("APOE", [("rs429358", 1), ("rs7412", 0)])], snp_ids=False)
    assert text == "APOE: 0/1, 0/0;"
    tokenizer = load_tokenizer()
    members = gp.gene_groups(SNPS, GROUPS)
    full = gp.GeneticPrompt(tokenizer, list(GROUPS), SNPS, members)
    compact = gp.GeneticPrompt(tokenizer, list(GROUPS), SNPS, members, snp_ids=False)
    keep = np.ones(len(SNPS), dtype=bool)
    full.build(keep)
    compact.build(keep)
    codes = torch.tensor([[0, 1, 2, 3, 2, 1]])
    listed = [
        (g, [(s, codes[0, SNPS.index(s)].item()) for s in snps]) for g, snps in GROUPS.items()
    ]
    expected = tokenizer(gp.serialise(listed, snp_ids=False), add_special_tokens=False)
    assert compact.ids(codes)[0][0].tolist() == expected["input_ids"]
    assert compact.length < full.length


def test_prompt_ids_are_the_tokenised_text():
    from adfuse.models.text import load_tokenizer

    tokenizer = load_tokenizer()
    members = gp.gene_groups(SNPS, GROUPS)
    prompt = gp.GeneticPrompt(tokenizer, list(GROUPS), SNPS, members)
    keep = np.array([True, True, False, True, True, False])
    prompt.build(keep)
    codes = torch.tensor([[0, 1, 2, 3, 2, 1], [2, 2, 0, 0, 1, 0]])
    ids, genes = prompt.ids(codes)
    for row, sample in enumerate(codes.tolist()):
        listed = [
            (gene, [(s, sample[SNPS.index(s)]) for s in snps if keep[SNPS.index(s)]])
            for gene, snps in GROUPS.items()
        ]
        text = gp.serialise([(g, s) for g, s in listed if s])
        assert ids[row].tolist() == tokenizer(text, add_special_tokens=False)["input_ids"]
    names = [list(GROUPS)[g] for g in genes[0].unique_consecutive().tolist()]
    assert names == ["APOE", "CLU", "PICALM"]  # BIN1 and CR1 have no kept SNP


def test_gene_order_permutation_moves_whole_gene_blocks():
    from adfuse.models.text import load_tokenizer

    tokenizer = load_tokenizer()
    prompt = gp.GeneticPrompt(tokenizer, list(GROUPS), SNPS, gp.gene_groups(SNPS, GROUPS))
    prompt.build(np.ones(len(SNPS), dtype=bool))
    codes = torch.tensor([[0, 1, 2, 1, 0, 2]])
    order = [4, 2, 0, 3, 1]
    ids, genes = prompt.ids(codes, [order])
    listed = [
        (g, [(s, codes[0, SNPS.index(s)].item()) for s in snps]) for g, snps in GROUPS.items()
    ]
    text = gp.serialise([listed[i] for i in order])
    assert ids[0].tolist() == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert genes[0].unique_consecutive().tolist() == order

    model = build()
    batch = random_batch(model, n=3, seed=1, present="all")
    model.eval()
    first, _ = model.genetic_tokens(batch)
    torch.testing.assert_close(model.genetic_tokens(batch)[0], first)  # eval: fixed order
    model.train()
    torch.manual_seed(0)
    shuffled, shuffled_genes = model.genetic_tokens(batch)
    assert not torch.equal(shuffled, first)
    # the same tokens, in another order of whole gene blocks
    assert torch.equal(shuffled.sum(dim=1), first.sum(dim=1)) or torch.allclose(
        shuffled.sum(dim=1), first.sum(dim=1), atol=1e-4
    )
    assert (
        shuffled_genes.sort(dim=1).values.tolist()
        == model.genetic_tokens(batch)[1].sort(dim=1).values.tolist()
    )
    fixed = build(permute_genes=False).train()
    fixed_first, _ = fixed.eval().genetic_tokens(batch)
    torch.testing.assert_close(fixed.train().genetic_tokens(batch)[0], fixed_first)


def test_qc_and_snp_choice_are_fitted_on_the_training_split():
    model = build(snps_per_gene=1, maf_min=0.05)
    rng = np.random.default_rng(0)
    n = 60
    target = torch.tensor(rng.integers(0, 3, n))
    dosages = rng.integers(0, 3, (n, len(SNPS))).astype(np.float64)
    dosages[:, 5] = 0  # monomorphic: fails MAF
    dosages[:, 0] = target.numpy().clip(0, 2)  # APOE's first SNP follows the target
    mean, scale = dosages.mean(0), np.where(dosages.std(0) > 0, dosages.std(0), 1.0)
    inputs = {
        "genotype": torch.tensor((dosages - mean) / scale, dtype=torch.float32),
        "t1": torch.zeros(n, *model.input_shape("t1")),
    }
    present = {"genotype": torch.ones(n, dtype=torch.bool), "t1": torch.ones(n, dtype=torch.bool)}
    ids = [f"S{i}" for i in range(n)]
    train = SimpleNamespace(
        preprocessor=SimpleNamespace(scalers={"genotype": SimpleNamespace(mean=mean, scale=scale)}),
        batch=lambda: Batch(inputs, present, target, ids),
    )
    model.fit_statistics(train)
    assert model.fitted_on() == {"rgenima SNP QC": ids}
    report = model.statistics_report()
    assert report["snp_qc"]["fail_maf"] == 1 and report["snp_qc"]["pass"] == 5
    kept = [SNPS[i] for i in np.flatnonzero(model.snp_keep.numpy())]
    assert "rs6656401" not in kept  # failed QC
    assert "rs429358" in kept and "rs7412" not in kept  # APOE: its most associated SNP only
    assert model.snp_score[0] > model.snp_score[1:].max()


# ----------------------------------------------------------------------------- RiT and the stages
def test_rit_patch_is_a_conv_whose_kernel_spans_the_crop():
    model = build()
    patch = model.image_encoder.patch
    size = 4
    conv = torch.nn.Conv3d(1, patch.projection.out_features, kernel_size=size)
    with torch.no_grad():
        conv.weight.copy_(patch.projection.weight.view(-1, 1, size, size, size))
        conv.bias.copy_(patch.projection.bias)
    crops = torch.randn(2, 5, size, size, size)
    by_conv = conv(crops.view(10, 1, size, size, size)).view(2, 5, -1)
    by_linear = patch.projection(crops.flatten(2))
    torch.testing.assert_close(by_linear, by_conv, rtol=1e-5, atol=1e-5)
    assert model.image_encoder(crops).shape == (2, 5, 16)  # one token per region


def test_stage_one_trains_rit_on_the_task_then_stage_two_keeps_it_frozen():
    model = build()
    image, fusion = model.stages()
    assert image.name == "image" and set(image.trainable) == {"image_encoder.", "image_head."}
    assert image.epochs is None and build(image_epochs=7).stages()[0].epochs == 7
    names = [n for n, _ in model.named_parameters()]
    assert not any(fusion.applies_to(n) for n in names if n.startswith("image_"))
    assert any(fusion.applies_to(n) for n in names if n.startswith("connector"))

    batch = random_batch(model, n=4, seed=2)
    model.begin_stage(image)
    model.eval()
    with torch.no_grad():
        out = model(batch)
        tokens = model.image_encoder(batch.inputs["t1"])
        expected = model.image_head(tokens.mean(dim=1))
    here = batch.present["t1"]
    torch.testing.assert_close(out[here], expected[here])  # stage 1: RiT's own head
    assert torch.equal(out[~here], torch.zeros_like(out[~here]))

    model.begin_stage(fusion)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(fusion.applies_to(name))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    batch = random_batch(model, n=4, seed=3, present="all")
    model.loss(batch, model(batch)).backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert not any(n.startswith("image_") for n in changed)
    assert any(n.startswith("connector") for n in changed) and any(
        n.startswith("lm.") for n in changed
    )


def test_the_fused_path_never_sends_gradient_into_rit():
    model = build()
    model.train()
    batch = random_batch(model, n=4, seed=4, present="all")
    out = model(batch)
    torch.nn.functional.cross_entropy(out, batch.target).backward()
    assert all(p.grad is None for p in model.image_encoder.parameters())
    assert model.connector.weight.grad is not None


# ----------------------------------------------------------------------------- absent modalities
def test_subjects_with_only_snps_only_t1_or_both():
    model = build().eval()
    batch = random_batch(model, n=4, seed=5, present="all")
    batch.present["t1"] = torch.tensor([True, False, True, False])
    batch.present["genotype"] = torch.tensor([True, True, False, False])
    image_tokens, image_present = model.image_tokens(batch)
    with torch.no_grad():
        _, mask, region, gene = model.sequence(
            batch, image_tokens, image_present, batch.present["genotype"]
        )
        out = model(batch)
    text = model.prompt.length
    n_regions = len(make_spec()["t1"].feature_names)
    assert mask.sum(dim=1).tolist() == [2 + n_regions + text, 2 + text, 2 + n_regions, 2]
    assert ((region >= 0) & mask).sum(dim=1).tolist() == [n_regions, 0, n_regions, 0]
    assert ((gene >= 0) & mask).sum(dim=1).tolist() == [text, text, 0, 0]
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("modalities", [["t1"], ["genotype"]])
def test_one_modality_models_report_their_fitted_subjects(modalities):
    """The engine asks every model which subjects its statistics saw (the leak check)."""
    model = build(modalities=modalities)
    assert model.fitted_on() == {"rgenima SNP QC": []}
    assert isinstance(model.statistics_report(), dict)


def test_mixture_withholds_t1_from_half_and_paired_counts_only_pairs():
    model = build(training_data="mixture").train()
    batch = random_batch(model, n=8, seed=6, present="all")
    present = torch.ones(8, dtype=torch.bool)
    image, counted = model._training_view(batch, present.clone(), present.clone())
    assert counted.all() and int(image.sum()) == 4
    model = build(training_data="paired").train()
    image_present = torch.tensor([True, True, False, False] * 2)
    genes = torch.tensor([True, False, True, False] * 2)
    _, counted = model._training_view(batch, image_present, genes)
    assert counted.tolist() == [True, False, False, False] * 2
    gene_only = build(training_data="gene_only")
    assert gene_only.modalities == ["genotype"] and [s.name for s in gene_only.stages()] == [
        "fusion"
    ]


@pytest.mark.parametrize(
    "overrides",
    [
        {"genetic_encoder": "mlp"},
        {"fusion": "concat"},
        {"image_encoder": "cnn", "roi_size": None},
        {"lm_training": "lora", "lora_rank": 2},
    ],
    ids=["snp-mlp", "late-fusion", "whole-brain-cnn", "lora"],
)
def test_baseline_switches_build_train_and_keep_absent_modalities_out(overrides):
    model = build(**overrides)
    model.train()
    batch = random_batch(model, n=4, seed=7)
    loss = model.loss(batch, model(batch))
    loss.backward()
    assert torch.isfinite(loss)
    model.eval()
    with torch.no_grad():
        reference = model(batch)
        noisy = Batch(
            {
                m: torch.where(_here(batch, m, x), x, torch.randn_like(x) * 5)
                for m, x in batch.inputs.items()
            },
            batch.present,
            batch.target,
            batch.ids,
        )
        torch.testing.assert_close(model(noisy), reference, rtol=0, atol=0)
    if overrides.get("lm_training") == "lora":
        trainable = [
            n for n, p in model.named_parameters() if p.requires_grad and n.startswith("lm.")
        ]
        assert trainable and all("lora_" in n for n in trainable)


def _here(batch, modality, x):
    return batch.present[modality].view(-1, *[1] * (x.dim() - 1))


def test_tiny_llama_through_a_local_path(tmp_path):
    import transformers

    from adfuse.models.text import load_tokenizer

    tokenizer = load_tokenizer()
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    transformers.LlamaModel(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = build(lm_path=str(tmp_path), lm_layers=None, lm_training="lora", lora_rank=2)
    assert type(model.lm.get_base_model()).__name__ == "LlamaModel"
    model.train()
    batch = random_batch(model, n=3, seed=8, present="all")
    model.loss(batch, model(batch)).backward()
    layout = model.attention_layout(batch)
    assert len(layout["attentions"]) == 2
    assert layout["attentions"][0].shape[-1] == layout["mask"].shape[1]


# ----------------------------------------------------------------------------- attribution
def test_attribution_is_zero_for_genotypes_at_the_reference_and_crops_at_the_baseline():
    model = build().eval()
    batch = random_batch(model, n=3, seed=5, present="all")
    batch.inputs["genotype"][0] = 0.0  # subject 0: every genotype 0/0 (snp_mean 0, scale 1)
    baseline = batch.inputs["t1"][1].clone()  # subject 1's crops are the baseline
    for steps in (0, 3):
        out = model.attribution(batch, baseline, steps)
        genes, regions = out["gene"] >= 0, out["region"] >= 0
        assert out["crops"].shape == batch.inputs["t1"].shape
        assert out["contribution"][0][genes[0]].abs().max() < 1e-6
        assert out["crops"][1].abs().max() < 1e-6
        assert out["contribution"][2][genes[2]].abs().sum() > 0
        assert out["crops"][2].abs().sum() > 0
        assert (out["contribution"][regions] == 0).all()  # the regions' part is per voxel
    with pytest.raises(ConfigError, match="steps"):
        model.attribution(batch, baseline, -1)


def test_attribution_differentiates_down_to_the_voxels_through_the_vit():
    """Each voxel's gradient goes through RiT's ViT, which mixes the regions: changing region 0's
    crop moves the contributions of the other regions' voxels too (a token-level attribution,
    cut at the ViT's output, would assign region r only what its own token carries)."""
    model = build(vit_layers=2).eval()
    batch = random_batch(model, n=2, seed=6, present="all")
    baseline = batch.inputs["t1"].mean(dim=0)
    before = model.attribution(batch, baseline)["crops"]
    batch.inputs["t1"][:, 0] += 1.0
    after = model.attribution(batch, baseline)["crops"]
    assert (after[:, 1:] - before[:, 1:]).abs().sum() > 0


def test_integrated_gradients_add_up_to_the_change_of_the_score():
    """Completeness: with the SNP text fixed, the voxel contributions of integrated gradients sum
    to score(crops) - score(baseline crops); a single gradient (steps=0) only estimates it."""
    model = build().eval()
    batch = random_batch(model, n=3, seed=7, present="all")
    baseline = batch.inputs["t1"].mean(dim=0)

    def score(crops):
        inputs = batch.inputs | {"t1": crops}
        with torch.no_grad():
            out = model(Batch(inputs, batch.present, batch.target, batch.ids))
        return model._score(out, batch.target)

    change = score(batch.inputs["t1"]) - score(baseline.expand_as(batch.inputs["t1"]))
    total = {k: model.attribution(batch, baseline, k)["crops"].flatten(1).sum(1) for k in (0, 32)}
    torch.testing.assert_close(total[32], change, rtol=0.02, atol=2e-3)
    assert (total[32] - change).abs().sum() < (total[0] - change).abs().sum()


def train_stage(model, stage, batch: Batch, steps: int, lr: float) -> None:
    """``steps`` full-batch AdamW steps of one stage as the engine takes them: the stage's
    parameters only, each at ``lr`` times its factor (``Stage.lr_factor``)."""
    model.begin_stage(stage)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(stage.applies_to(name))
    optimizer = torch.optim.AdamW(stage.parameter_groups(model, lr), lr=lr)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model.loss(batch, model(batch)).backward()
        optimizer.step()


def test_attribution_finds_the_region_a_trained_model_depends_on():
    """Known answer: the class is a SNP's dosage plus a shift of region 3's intensity; after
    training, region 3's voxels have the largest attribution (the SNP's gene: see the report on
    issue 8)."""
    model = build(seed=0)
    image, fusion = model.stages()
    generator = torch.Generator().manual_seed(0)
    n = 64
    dosages = torch.randint(0, 3, (n, len(SNPS)), generator=generator).float()
    shift = torch.randint(0, 2, (n,), generator=generator)
    target = (dosages[:, 2].long() + shift).clamp(max=2)
    crops = torch.randn(n, *model.input_shape("t1"), generator=generator)
    crops[:, 3] += 2.0 * shift.float()[:, None, None, None]
    present = {m: torch.ones(n, dtype=torch.bool) for m in ("genotype", "t1")}
    batch = Batch({"genotype": dosages, "t1": crops}, present, target, [f"S{i}" for i in range(n)])
    for stage, steps, rate in ((image, 40, 3e-3), (fusion, 60, 1e-3)):
        train_stage(model, stage, batch, steps, rate)
    model.begin_stage(None)
    out = model.attribution(batch, crops.mean(dim=0), steps=4)
    per_region = out["crops"].flatten(2).sum(dim=2)  # [subjects, regions]
    assert int(per_region.mean(dim=0).argmax()) == 3  # toward each subject's own class
    assert int(per_region.abs().mean(dim=0).argmax()) == 3


def _fit_gene_only(model, batch: Batch, steps: int, lr: float = 1e-3) -> float:
    """Train a gene-only model (its one stage); the training accuracy at the end."""
    (stage,) = model.stages()
    train_stage(model, stage, batch, steps, lr)
    model.begin_stage(None)
    model.eval()
    with torch.no_grad():
        return float((model(batch).argmax(dim=1) == batch.target).float().mean())


@pytest.mark.parametrize("readout", [True, False])
def test_gene_readout_learns_a_genotype_the_pooled_head_does_not(readout):
    """Known answer: the class is one gene's (CR1) dosage, the other genes are noise, the gene
    order is permuted every step. With the gene readout the model fits it (0.85); the head on the
    mean of ~40 text tokens alone (the paper's pooled head) stays far below in the same 60 steps
    (0.50, chance 1/3): the collapse of gene-only training the readout was added for (see the
    module docstring)."""
    model = build(seed=0, training_data="gene_only", gene_readout=readout, hidden=32)
    model._aim_gene_readout()
    generator = torch.Generator().manual_seed(0)
    n = 48
    dosages = torch.randint(0, 3, (n, len(SNPS)), generator=generator).float()
    target = dosages[:, SNPS.index("rs6656401")].long()  # 3 classes of about 1/3
    present = {"genotype": torch.ones(n, dtype=torch.bool)}
    batch = Batch({"genotype": dosages}, present, target, [f"S{i}" for i in range(n)])
    accuracy = _fit_gene_only(model, batch, steps=60)
    if readout:
        assert accuracy >= 0.75  # measured 0.85
    else:
        assert accuracy <= 0.6  # measured 0.50; chance about 1/3
