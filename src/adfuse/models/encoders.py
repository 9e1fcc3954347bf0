"""Modality encoders: every prepared view becomes tokens ``[B, T, dim]``.

One constructor for all of them, ``make_encoder(spec, view, input_shape, dim, size)``; the fusion
models (baselines, ACMCA, SMMT, PerM-MoE, anchored adaptation, R-GenIMA) compose these tokens.

| view (prepare)           | input          | encoder                                   | tokens T        |
|--------------------------|----------------|-------------------------------------------|-----------------|
| volume                   | [B, X, Y, Z]   | MONAI 3D ResNet (basic, [1,1,1,1])        | cells of its last feature map |
| slice                    | [B, H, W]      | MONAI 2D ResNet (basic, [1,1,1,1])        | cells of its last feature map |
| roi                      | [B, R, s,s,s]  | linear map of each whole crop + region embedding | R        |
| regions                  | [B, R]         | per-region scalar -> token + region embedding (or an MLP) | R (1) |
| vector (tabular, SNPs)   | [B, F]         | MLP (LayerNorm, GELU, dropout)            | 1 (or k groups) |
| series (fMRI)            | [B, T, R]      | windows of w time points -> transformer   | ceil(T / w)     |
| connectivity (fMRI)      | [B, R, R]      | MLP on the upper triangle                 | 1               |
| tokens (notes)           | [B, L] ids     | pretrained language model (models/text.py) | L              |

Sizes: ``size="cpu"`` is small enough to train on a laptop CPU; ``size="paper"`` has the widths
the papers use (ResNet-10 widths 64-512 with a strided 7^3 stem and max-pool, MedicalNet style).
Any size entry can be overridden by name through ``**options``.

``encoder.encode(x, present)`` runs the encoder on the present samples only and leaves zeros for
the absent ones: an absent modality's zero filler is never computed, so its content cannot reach
the output and the batch statistics of normalisation layers only ever see real inputs.
"""

from __future__ import annotations

import inspect
import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from adfuse.errors import ConfigError
from adfuse.models.layers.pooling import masked_mean

if TYPE_CHECKING:
    from adfuse.data.cohort import ModalitySpec

SIZES = ("cpu", "paper")


class TokenEncoder(nn.Module):
    """Base of the encoders: ``forward(x) -> [B, n_tokens, dim]``; ``pool(tokens) -> [B, dim]``."""

    def __init__(self, n_tokens: int, dim: int):
        super().__init__()
        self.n_tokens = n_tokens
        self.dim = dim

    def token_mask(self, x: torch.Tensor) -> torch.Tensor | None:
        """``[B, T]`` True where a token is real (None: every token is); text masks its padding."""
        return None

    def out_tokens(self, **extra: Any) -> int:
        """How many tokens ``forward(x, **extra)`` returns."""
        return self.n_tokens

    def pool(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return masked_mean(tokens, mask)

    def encode(self, x: torch.Tensor, present: torch.Tensor, **extra: Any) -> torch.Tensor:
        """Tokens of the present samples, zeros for the absent ones (which are never computed).

        ``extra`` tensors with one row per sample (a text prefix) are subset the same way.
        """
        index = present.nonzero().squeeze(1)
        reference = next(self.parameters())
        if len(index) == 0:
            shape = (len(x), self.out_tokens(**extra), self.dim)
            return torch.zeros(shape, dtype=reference.dtype, device=x.device)
        chosen = {k: v[index] if torch.is_tensor(v) else v for k, v in extra.items()}
        tokens = self(x[index], **chosen)
        if len(index) == len(x):
            return tokens
        out = tokens.new_zeros((len(x), *tokens.shape[1:]))
        return out.index_copy(0, index, tokens)

    def encode_pooled(self, x: torch.Tensor, present: torch.Tensor, **extra: Any) -> torch.Tensor:
        """The pooled ``[B, dim]`` embedding of the present samples (zeros where absent)."""
        mask = self.token_mask(x)
        tokens = self.encode(x, present, **extra)
        if mask is not None and tokens.shape[1] != mask.shape[1]:  # a prefix was prepended
            mask = torch.cat([mask.new_ones((len(x), tokens.shape[1] - mask.shape[1])), mask], 1)
        return self.pool(tokens, mask)


def _embedding(n: int, dim: int) -> nn.Parameter:
    return nn.Parameter(nn.init.trunc_normal_(torch.empty(n, dim), std=0.02))


# ----------------------------------------------------------------------------- images
def _resnet_grid(
    shape: tuple[int, ...], stem_kernel: int, stem_stride: int, max_pool: bool
) -> tuple[int, ...]:
    """The last feature map's grid of a MONAI ResNet (stem, optional max-pool, 3 stride-2 layers)."""
    grid = []
    for n in shape:
        n = (n + 2 * (stem_kernel // 2) - stem_kernel) // stem_stride + 1
        if max_pool:
            n = (n - 1) // 2 + 1
        for _ in range(3):
            n = (n - 1) // 2 + 1
        grid.append(n)
    return tuple(grid)


class ResNetEncoder(TokenEncoder):
    """A MONAI ResNet (basic blocks) whose last feature map cells are the tokens, each projected to
    ``dim`` with a learned position embedding. On a grid too small for the stem's down-sampling
    (a single cell), the max-pool and then the stem stride are dropped, so attention always has
    several spatial tokens to choose from."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        dim: int,
        widths: tuple[int, ...] = (8, 16, 32, 64),
        layers: tuple[int, ...] = (1, 1, 1, 1),
        stem_kernel: int = 3,
        stem_stride: int = 1,
        max_pool: bool = False,
        dropout: float = 0.0,
    ):
        from adfuse.config import require

        ResNet = require("monai.networks.nets", "imaging", "the image encoders").ResNet  # noqa: N806

        grid = _resnet_grid(input_shape, stem_kernel, stem_stride, max_pool)
        if math.prod(grid) == 1 and max_pool:
            max_pool = False
            grid = _resnet_grid(input_shape, stem_kernel, stem_stride, max_pool)
        if math.prod(grid) == 1 and stem_stride > 1:
            stem_stride = 1
            grid = _resnet_grid(input_shape, stem_kernel, stem_stride, max_pool)
        super().__init__(math.prod(grid), dim)
        self.grid = grid
        self.backbone = ResNet(
            block="basic",
            layers=list(layers),
            block_inplanes=list(widths),
            spatial_dims=len(input_shape),
            n_input_channels=1,
            conv1_t_size=stem_kernel,
            conv1_t_stride=stem_stride,
            no_max_pool=not max_pool,
            feed_forward=False,
        )
        self.projection = nn.Linear(widths[-1], dim)
        self.position = _embedding(self.n_tokens, dim)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, *grid]``: MONAI ResNet's forward up to its last layer (as ResNetFeatures)."""
        net = self.backbone
        h = net.act(net.bn1(net.conv1(x.unsqueeze(1).to(self.projection.weight.dtype))))
        if not net.no_max_pool:
            h = net.maxpool(h)
        return net.layer4(net.layer3(net.layer2(net.layer1(h))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cells = self.feature_map(x).flatten(2).transpose(1, 2)  # [B, cells, C]
        return self.dropout(self.norm(self.projection(cells) + self.position))


class RoiEncoder(TokenEncoder):
    """One token per atlas region: a linear map of the whole flattened crop (a 3D convolution whose
    kernel spans the crop, shared by the regions) plus a learned region embedding."""

    def __init__(self, input_shape: tuple[int, ...], dim: int, dropout: float = 0.0):
        n_regions, *crop = input_shape
        super().__init__(n_regions, dim)
        self.projection = nn.Linear(math.prod(crop), dim)
        self.region = _embedding(n_regions, dim)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        crops = x.flatten(2).to(self.projection.weight.dtype)  # [B, R, s^3]
        return self.dropout(self.norm(self.projection(crops) + self.region))


class RegionEncoder(TokenEncoder):
    """Mean intensity per region ``[B, R]``: ``mode="tokens"`` gives one token per region (its own
    linear map of the scalar plus a region embedding); ``mode="mlp"`` gives one token (an MLP)."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        dim: int,
        mode: str = "tokens",
        hidden: int = 64,
        dropout: float = 0.1,
    ):
        (n_regions,) = input_shape
        if mode not in ("tokens", "mlp"):
            raise ConfigError(f"regions encoder mode '{mode}': choose tokens or mlp")
        super().__init__(n_regions if mode == "tokens" else 1, dim)
        self.mode = mode
        if mode == "tokens":
            self.weight = _embedding(n_regions, dim)
            self.region = _embedding(n_regions, dim)
            self.norm = nn.LayerNorm(dim)
        else:
            self.mlp = VectorEncoder(input_shape, dim, hidden=hidden, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "mlp":
            return self.mlp(x)
        x = x.to(self.weight.dtype).unsqueeze(-1)  # [B, R, 1]
        return self.norm(x * self.weight + self.region)


# ----------------------------------------------------------------------------- vectors
class VectorEncoder(TokenEncoder):
    """Features ``[B, F]`` -> an MLP (Linear, LayerNorm, GELU, dropout, Linear) -> one token.

    ``tokens=k`` cuts the features into k contiguous groups (zero-padded to equal size), each with
    its own first layer and a group embedding: k tokens an attention layer can choose between.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        dim: int,
        hidden: int = 64,
        tokens: int = 1,
        dropout: float = 0.1,
    ):
        (n_features,) = input_shape
        if not 1 <= tokens <= max(n_features, 1):
            raise ConfigError(f"vector encoder: tokens={tokens} for {n_features} features")
        super().__init__(tokens, dim)
        self.group_size = math.ceil(n_features / tokens)
        self.padding = self.group_size * tokens - n_features
        bound = 1 / math.sqrt(max(self.group_size, 1))
        self.first = nn.Parameter(
            torch.empty(tokens, self.group_size, hidden).uniform_(-bound, bound)
        )
        self.first_bias = nn.Parameter(torch.zeros(tokens, hidden))
        self.rest = nn.Sequential(
            nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )
        self.group = _embedding(tokens, dim) if tokens > 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.pad(x.to(self.first.dtype), (0, self.padding))
        groups = x.view(len(x), self.n_tokens, self.group_size)
        tokens = self.rest(torch.einsum("bkf,kfh->bkh", groups, self.first) + self.first_bias)
        return tokens if self.group is None else tokens + self.group


class ConnectivityEncoder(TokenEncoder):
    """A connectivity matrix ``[B, R, R]`` -> its upper triangle -> an MLP -> one token."""

    def __init__(
        self, input_shape: tuple[int, ...], dim: int, hidden: int = 64, dropout: float = 0.1
    ):
        n_regions = input_shape[0]
        super().__init__(1, dim)
        rows, cols = torch.triu_indices(n_regions, n_regions, offset=1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.mlp = VectorEncoder((len(rows),), dim, hidden=hidden, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x[:, self.rows, self.cols])


# ----------------------------------------------------------------------------- time series
class SeriesEncoder(TokenEncoder):
    """An fMRI series ``[B, T, R]``: windows of ``window`` time points x R regions -> linear ->
    tokens + position embedding -> a small pre-norm transformer (``layers`` layers)."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        dim: int,
        window: int = 10,
        layers: int = 1,
        heads: int = 2,
        dropout: float = 0.1,
    ):
        length, n_regions = input_shape
        if dim % heads:
            raise ConfigError(f"series encoder: dim {dim} is not a multiple of heads {heads}")
        window = min(window, length)
        super().__init__(math.ceil(length / window), dim)
        self.window = window
        self.padding = self.n_tokens * window - length
        self.embed = nn.Linear(window * n_regions, dim)
        self.position = _embedding(self.n_tokens, dim)
        layer = nn.TransformerEncoderLayer(
            dim,
            heads,
            dim_feedforward=2 * dim,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.pad(x.to(self.embed.weight.dtype), (0, 0, 0, self.padding))
        windows = x.reshape(len(x), self.n_tokens, -1)  # [B, n, window * R]
        return self.norm(self.transformer(self.embed(windows) + self.position))


# ----------------------------------------------------------------------------- the constructor
_IMAGE = {
    "cpu": {"widths": (8, 16, 32, 64), "stem_kernel": 3, "stem_stride": 2, "max_pool": False},
    "paper": {"widths": (64, 128, 256, 512), "stem_kernel": 7, "stem_stride": 2, "max_pool": True},
}
_MLP = {"cpu": {"hidden": 64}, "paper": {"hidden": 256}}
_SERIES = {
    "cpu": {"window": 10, "layers": 1, "heads": 2},
    "paper": {"window": 10, "layers": 2, "heads": 4},
}
_ENCODERS: dict[str, tuple[type, dict[str, dict[str, Any]]]] = {
    "volume": (ResNetEncoder, _IMAGE),
    "slice": (ResNetEncoder, _IMAGE),
    "roi": (RoiEncoder, {"cpu": {}, "paper": {}}),
    "regions": (RegionEncoder, _MLP),
    "vector": (VectorEncoder, _MLP),
    "connectivity": (ConnectivityEncoder, _MLP),
    "series": (SeriesEncoder, _SERIES),
}


def make_encoder(
    spec: ModalitySpec,
    view: str | None,
    input_shape: tuple[int, ...],
    dim: int,
    size: str = "cpu",
    **options: Any,
) -> TokenEncoder:
    """The encoder of one modality in one prepare view (None: the kind's default view).

    ``input_shape`` is the per-sample shape (``model.input_shape(modality)``); ``options`` override
    the size's defaults by name (``widths=``, ``tokens=``, ``window=``, ``mode=``; every encoder
    takes ``dropout=``; text: ``path=``, ``trainable=``). An option the encoder does not have is a ConfigError.
    """
    from adfuse.prepare import DEFAULT_VIEWS, VIEWS_OF_KIND

    if size not in SIZES:
        raise ConfigError(f"encoder size '{size}': choose from {', '.join(SIZES)}")
    view = view or DEFAULT_VIEWS.get(spec.kind)
    if view not in VIEWS_OF_KIND.get(spec.kind, ()):
        raise ConfigError(f"no encoder for {spec.name} ({spec.kind}) in the '{view}' view")
    if view == "tokens":
        from adfuse.models.text import TextEncoder

        _check_options(TextEncoder, options, spec.name)
        return TextEncoder(input_shape[0], dim, **options)
    cls, sizes = _ENCODERS[view]
    settings = {**sizes[size], **options}
    _check_options(cls, settings, spec.name)
    return cls(tuple(input_shape), dim, **settings)


def _check_options(cls: type, options: dict[str, Any], modality: str) -> None:
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self", "input_shape", "dim"}
    allowed -= {"n_tokens", "language_model"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(
            f"{cls.__name__} for {modality} has no option '{unknown[0]}' "
            f"(it has: {', '.join(sorted(allowed))})"
        )
