"""The anchor-capable foundation encoders: extra input tokens, masks, LoRA on/off, saved folders,
a tiny Llama (built here, saved to a local folder) as the text backbone."""

from __future__ import annotations

import pytest
import torch

from adfuse.data.cohort import ModalitySpec
from adfuse.errors import ConfigError
from adfuse.models.foundation import (
    EncoderConfig,
    adapters_enabled,
    add_lora,
    build_encoder,
    gene_token_groups,
    load_encoder,
    save_encoder,
)
from tests.models.conftest import make_spec

SPEC = make_spec()


def volume_encoder(seed: int = 0):
    torch.manual_seed(seed)
    return build_encoder(EncoderConfig(group="smri", input_shape=(16, 16, 16), patch=8, width=32))


def test_volume_encoder_is_a_vit_over_patches_that_takes_extra_tokens():
    encoder = volume_encoder().eval()
    x = torch.randn(3, 16, 16, 16)
    present = {"t1": torch.tensor([True, True, False])}
    states, mask = encoder({"t1": x}, present)
    assert states.shape == (3, 8, 32)  # (16 / 8)^3 patches
    assert mask[:2].all() and not mask[2].any()
    extra = torch.randn(3, 5, 32)
    states, mask = encoder({"t1": x}, present, extra, torch.ones(3, 5, dtype=torch.bool))
    assert states.shape == (3, 13, 32)
    # the extra tokens reach the patch tokens through self-attention
    plain, _ = encoder({"t1": x}, present)
    assert not torch.allclose(states[:2, :8], plain[:2])
    # a masked extra token changes nothing
    hidden = torch.tensor([[True] * 4 + [False]] * 3)
    noisy = extra.clone()
    noisy[:, 4] = 100.0
    a, _ = encoder({"t1": x}, present, extra, hidden)
    b, _ = encoder({"t1": x}, present, noisy, hidden)
    torch.testing.assert_close(a[:, :12], b[:, :12], rtol=0, atol=0)


def test_patches_round_trip_the_volume():
    encoder = volume_encoder()
    x = torch.randn(2, 16, 16, 16)
    patches = encoder.patches(x)
    assert patches.shape == (2, 8, 512)
    assert torch.equal(patches.flatten(1).sort().values, x.flatten(1).sort().values)


def test_series_windows_and_their_padding():
    encoder = build_encoder(EncoderConfig(group="fmri", input_shape=(25, 5), window=10, width=32))
    assert encoder.n_tokens == 3
    patches = encoder.patches(torch.randn(2, 25, 5))
    assert patches.shape == (2, 3, 50)
    valid = encoder.patch_valid()
    assert valid[:2].all() and valid[2].sum() == 25  # 5 real time points x 5 regions


def test_genetics_has_one_token_per_gene_then_chunks():
    spec = ModalitySpec(
        "genotype",
        "genotype",
        (10,),
        tuple(f"rs{i}" for i in range(10)),
        groups={"APOE": ("rs0", "rs1"), "BIN1": ("rs5",)},
    )
    groups = gene_token_groups(spec, snps_per_token=4)
    assert groups == [[0, 1], [5], [2, 3, 4, 6], [7, 8, 9]]
    encoder = build_encoder(
        EncoderConfig(group="genetics", input_shape=(10,), token_groups=groups, width=16, heads=2)
    )
    x = torch.randn(2, 10)
    patches = encoder.patches(x)
    assert patches.shape == (2, 4, 4)
    torch.testing.assert_close(patches[:, 1, 0], x[:, 5])
    assert (patches[:, 1, 1:] == 0).all()
    states, _ = encoder({"genotype": x}, {"genotype": torch.ones(2, dtype=torch.bool)})
    assert states.shape == (2, 4, 16)


def test_lora_changes_the_output_only_when_enabled():
    encoder = volume_encoder().eval()
    add_lora(encoder, rank=2, alpha=4, dropout=0.0)
    lora = [p for n, p in encoder.named_parameters() if ".lora_" in n]
    assert lora and all(p.requires_grad for p in lora)
    with torch.no_grad():
        for p in lora:
            p.normal_()
    inputs = {"t1": torch.randn(2, 16, 16, 16)}
    present = {"t1": torch.ones(2, dtype=torch.bool)}
    off, _ = encoder(inputs, present)
    with adapters_enabled(encoder):
        on, _ = encoder(inputs, present)
    again, _ = encoder(inputs, present)
    assert not torch.allclose(on, off)
    torch.testing.assert_close(again, off, rtol=0, atol=0)
    assert all(p.requires_grad for p in lora)  # flags kept


def test_saved_encoder_round_trip_and_shape_check(tmp_path):
    encoder = volume_encoder(seed=3)
    save_encoder(encoder, tmp_path / "enc", {"note": "test"}, force=False)
    loaded = load_encoder(tmp_path / "enc", "smri", (16, 16, 16))
    for (name, a), (_, b) in zip(
        encoder.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    with pytest.raises(ConfigError, match="made for inputs"):
        load_encoder(tmp_path / "enc", "smri", (32, 32, 32))
    with pytest.raises(ConfigError, match="not a fmri"):
        load_encoder(tmp_path / "enc", "fmri", (16, 16, 16))
    with pytest.raises(ConfigError, match="not a saved encoder"):
        load_encoder(tmp_path, "smri", (16, 16, 16))


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    """A 2-layer Llama (vocab 128, hidden 64, GQA 4/2) built in code and saved locally."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("llama") / "tiny-llama"
    transformers.LlamaModel(config).save_pretrained(folder)
    return str(folder)


def test_text_encoder_with_a_tiny_llama_from_a_local_path(tiny_llama):
    config = EncoderConfig(group="text", path=tiny_llama, layers=1)
    clinical = SPEC["clinical"]
    encoder = build_encoder(config, clinical, clinical_width=10).eval()
    assert encoder.width == 64
    assert len(encoder.backbone.model.layers) == 1  # truncated to its first layer
    ids = torch.randint(1, 128, (3, 12))
    ids[0, 8:] = 0  # padding
    inputs = {"notes": ids, "clinical": torch.randn(3, 10)}
    present = {
        "notes": torch.tensor([True, False, True]),
        "clinical": torch.ones(3, dtype=torch.bool),
    }
    states, mask = encoder(inputs, present)
    n_fields = 9  # 8 numeric + PTGENDER: a name and a value token each
    assert states.shape[1] == 2 * n_fields + 12
    assert not mask[1, 2 * n_fields :].any()  # notes absent for sample 1
    extra = torch.randn(3, 6, 64)
    with_extra, mask = encoder(inputs, present, extra, torch.ones(3, 6, dtype=torch.bool))
    assert with_extra.shape[1] == 2 * n_fields + 12 + 6
    add_lora(encoder, rank=2, alpha=4, dropout=0.0)
    names = [n for n, _ in encoder.named_parameters() if ".lora_" in n]
    assert names and all(("q_proj" in n) or ("v_proj" in n) for n in names)


def test_clinical_values_are_written_xval_style():
    """A numeric field's value token is the "number" embedding scaled by the value."""
    clinical = SPEC["clinical"]
    encoder = build_encoder(EncoderConfig(group="text", layers=1), clinical, clinical_width=10)
    x = torch.zeros(2, 10)
    x[0, 3] = 2.0  # MMSE z-score
    x[:, 8] = 1.0  # PTGENDER=Female
    tokens, mask = encoder.clinical_tokens(x, torch.tensor([True, False]))
    torch.testing.assert_close(tokens[0, 7], 2.0 * encoder.number)  # value token of field 3
    torch.testing.assert_close(tokens[0, 17], encoder.categories[0])  # PTGENDER value: "Female"
    assert mask[0].all() and not mask[1].any()
