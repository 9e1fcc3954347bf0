"""The modality encoders: tokens of each view, spatial tokens, one token per region, the text model."""

from __future__ import annotations

import pytest
import torch

from adfuse.errors import ConfigError
from adfuse.models.encoders import TokenEncoder, make_encoder
from adfuse.models.layers.pooling import masked_mean
from adfuse.prepare import input_shape

DIM = 16
# (modality, view, options, expected tokens) on the conftest spec and PREPARE grids
CASES = [
    ("t1", "volume", {}, 8),  # 16^3 -> 2^3 cells
    ("t1", "slice", {}, 4),  # 32^2, stride-2 stem -> 2^2 cells
    ("t1", "roi", {}, 5),
    ("t1", "regions", {}, 5),
    ("t1", "regions", {"mode": "mlp"}, 1),
    ("clinical", "vector", {}, 1),
    ("genotype", "vector", {"tokens": 3}, 3),  # 50 SNPs in 3 groups of 17 (one zero pad)
    ("fmri", "series", {"window": 10}, 2),
    ("fmri", "series", {"window": 8}, 3),  # 20 time points: 3 windows, the last padded
    ("fmri", "connectivity", {}, 1),
]


def encoder_for(spec, prepare, modality, view, **options) -> tuple[TokenEncoder, tuple]:
    shape = input_shape(spec[modality], view, prepare)
    return make_encoder(spec[modality], view, shape, DIM, **options), shape


@pytest.mark.parametrize(("modality", "view", "options", "tokens"), CASES)
def test_tokens_and_pooled_shapes(spec, prepare, modality, view, options, tokens):
    torch.manual_seed(0)
    encoder, shape = encoder_for(spec, prepare, modality, view, **options)
    x = torch.randn(3, *shape)
    out = encoder(x)
    assert encoder.n_tokens == tokens
    assert out.shape == (3, tokens, DIM)
    assert encoder.pool(out).shape == (3, DIM)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("view", ["volume", "slice"])
def test_image_encoders_give_several_spatial_tokens_at_both_sizes(spec, prepare, view):
    for size in ("cpu", "paper"):
        encoder, shape = encoder_for(spec, prepare, "t1", view, size=size)
        assert encoder.n_tokens > 1
        assert encoder(torch.randn(2, *shape)).shape == (2, encoder.n_tokens, DIM)


def test_the_volume_encoder_is_a_monai_resnet(spec, prepare):
    from monai.networks.nets import ResNet

    encoder, _ = encoder_for(spec, prepare, "t1", "volume")
    assert isinstance(encoder.backbone, ResNet)


def test_a_region_token_sees_only_its_own_region(spec, prepare):
    for view in ("roi", "regions"):
        encoder, shape = encoder_for(spec, prepare, "t1", view)
        encoder.eval()
        x = torch.randn(2, *shape)
        changed = x.clone()
        changed[:, 3] += 1.0
        before, after = encoder(x), encoder(changed)
        moved = (after - before).abs().amax(dim=(0, 2)) > 0
        assert moved.tolist() == [False, False, False, True, False], view


def test_encode_computes_present_samples_only(spec, prepare):
    encoder, shape = encoder_for(spec, prepare, "t1", "volume")
    encoder.eval()
    x = torch.randn(4, *shape)
    present = torch.tensor([True, False, True, False])
    tokens = encoder.encode(x, present)
    assert tokens.shape == (4, encoder.n_tokens, DIM)
    assert (tokens[~present] == 0).all()
    torch.testing.assert_close(tokens[present], encoder(x[present]))
    none = encoder.encode(x, torch.zeros(4, dtype=torch.bool))
    assert none.shape == (4, encoder.n_tokens, DIM) and (none == 0).all()


def test_options_are_checked(spec, prepare):
    with pytest.raises(ConfigError, match="no option 'tokens'"):
        encoder_for(spec, prepare, "t1", "volume", tokens=2)
    with pytest.raises(ConfigError, match="no encoder"):
        encoder_for(spec, prepare, "clinical", "volume")
    with pytest.raises(ConfigError, match="size"):
        encoder_for(spec, prepare, "clinical", "vector", size="huge")


# ----------------------------------------------------------------------------- text
NOTES = [
    "Patient reports increasing forgetfulness over two years; MMSE 24.",
    "No cognitive complaints.",
]


@pytest.fixture(scope="module")
def minilm_encoder(spec, prepare):
    torch.manual_seed(0)
    encoder, _ = encoder_for(spec, prepare, "notes", None)
    return encoder.eval()


def tokenize(texts: list[str], length: int) -> torch.Tensor:
    from adfuse.models.text import load_tokenizer

    encoded = load_tokenizer(None)(
        texts, max_length=length, truncation=True, padding="max_length", return_tensors="pt"
    )
    return encoded["input_ids"]


def test_text_through_inputs_embeds_equals_input_ids(minilm_encoder, prepare):
    encoder = minilm_encoder
    ids = tokenize(NOTES, prepare.text_max_tokens)
    assert (ids[1] == 0).any(), "the short note is padded with 0"
    with torch.no_grad():
        direct = encoder.language_model(input_ids=ids, attention_mask=(ids != 0).long())
        expected = masked_mean(encoder.projection(direct.last_hidden_state), ids != 0)
        pooled = encoder.pool(encoder(ids), encoder.token_mask(ids))
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-6)
    assert encoder.n_tokens == prepare.text_max_tokens


def test_text_prefix_is_prepended(minilm_encoder, prepare):
    encoder = minilm_encoder
    ids = tokenize(NOTES, prepare.text_max_tokens)
    prefix = torch.randn(2, 3, encoder.hidden_size, requires_grad=True)
    out = encoder(ids, prefix=prefix)
    assert out.shape == (2, 3 + prepare.text_max_tokens, DIM)
    out.sum().backward()
    assert prefix.grad is not None  # gradients reach soft tokens through the frozen model
    pooled = encoder.encode_pooled(ids, torch.tensor([True, False]), prefix=prefix)
    assert pooled.shape == (2, DIM) and (pooled[1] == 0).all()


def test_text_model_is_frozen_by_default(spec, prepare):
    frozen, _ = encoder_for(spec, prepare, "notes", None)
    assert not any(p.requires_grad for p in frozen.language_model.parameters())
    assert all(p.requires_grad for p in frozen.projection.parameters())
    frozen.train()
    assert not frozen.language_model.training  # no dropout in a frozen model
    trainable, _ = encoder_for(spec, prepare, "notes", None, trainable=True)
    assert all(p.requires_grad for p in trainable.language_model.parameters())
    trainable.train()
    assert trainable.language_model.training


def test_a_tiny_llama_folder_works_as_the_text_model(tmp_path):
    from transformers import LlamaConfig, LlamaModel

    from adfuse.models.text import TextEncoder

    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    LlamaModel(config).save_pretrained(tmp_path)
    encoder = TextEncoder(12, DIM, path=str(tmp_path)).eval()
    ids = torch.randint(1, 128, (2, 12))
    ids[1, 8:] = 0
    assert encoder.vocab_size == 128 and encoder.pad_id == 0
    out = encoder(ids, prefix=torch.randn(2, 4, 32))
    assert out.shape == (2, 16, DIM)
    assert torch.isfinite(out).all()
    same = TextEncoder(12, DIM, language_model=LlamaModel(config).eval())
    assert same(ids).shape == (2, 12, DIM)
    with pytest.raises(ConfigError, match="positions"):
        TextEncoder(65, DIM, path=str(tmp_path))


def test_a_folder_without_a_model_is_a_config_error(tmp_path):
    from adfuse.models.text import TextEncoder, load_tokenizer

    with pytest.raises(ConfigError, match="could not be loaded"):
        TextEncoder(8, DIM, path=str(tmp_path))
    with pytest.raises(ConfigError, match="tokenizer"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(ConfigError, match="never downloaded"):
        TextEncoder(8, DIM, path="sentence-transformers/all-MiniLM-L6-v2")
