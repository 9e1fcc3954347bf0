"""A sparse mixture-of-experts feed-forward layer, shared by Flex-MoE and PerM-MoE.

``SparseMoE(dim, hidden, n_experts, top_k)`` replaces a transformer's feed-forward block: a router
scores the ``E`` experts for each token, the ``k`` best are kept and their scores soft-maxed
(softmax over the selected experts only, as in Shazeer et al. 2017), and the token's output is the
gate-weighted sum of those ``k`` experts' outputs. Every expert is a two-layer GELU MLP
(``dim -> hidden -> dim``).

- **Routers.** ``n_routers`` independent routers over the same experts (PerM-MoE gives each
  modality its own); ``forward(x, router=ids)`` says which router scores each token (default 0).
  With ``noisy=True`` the training logits get Gaussian noise of a learned, input-dependent scale
  (softplus(x W_noise)), which spreads exploration over experts; evaluation is noise-free.
- **Dispatch by grouping, no loop over samples.** The ``N x k`` (token, expert) assignments are
  sorted by expert (a stable ``argsort``); the tokens are gathered in that order with one
  ``index_select``, each expert runs once on its contiguous block of rows (one matmul pair per
  expert: the same FLOPs as a dense FFN of ``k`` experts' width), and the gate-weighted outputs are
  summed back into their tokens with one ``index_add``. Pure torch, any device.
- **Capacity.** ``capacity_factor=c`` lets an expert take at most ``ceil(c * N * k / E)``
  assignments per call in training (GShard/Switch); later assignments (in token order) are dropped,
  so that token gets only its other experts (or zero: the residual path around the layer carries
  it). Without a factor, and always in evaluation, there is no limit: no token is ever dropped,
  and a sample's output never depends on the other samples of its batch.
- **Load balancing** (Shazeer et al. 2017, eq. 6-10): ``cv²(importance) + cv²(load)``, where the
  importance of an expert is the sum of its gates over the tokens and its load the number of
  tokens routed to it (in noisy training, the smooth estimate ``sum_n P(expert in top k)`` so it
  has a gradient). cv² is the squared coefficient of variation (population variance / mean²): 0
  exactly when routing is uniform, positive otherwise.
- **Analysis.** After a call, ``last_routing`` holds the logits, the chosen experts, gates, which
  assignments were kept and the balancing loss; ``activation_counts`` (a non-persistent buffer)
  accumulates assignments per expert until ``reset_counts()``.

``specialization_loss`` is the cross-entropy that pushes tokens toward a designated expert (Flex-MoE's
router loss for incomplete samples, PerM-MoE's expert-specialization loss).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

NOISE_EPSILON = 1e-2  # floor of the noise scale (Shazeer et al.'s noise_epsilon)


@dataclass
class Routing:
    """What the router decided for ``N`` tokens (``k`` experts each)."""

    logits: torch.Tensor  # [N, E] the logits top-k chose from (noisy in noisy training)
    indices: torch.Tensor  # [N, k] chosen experts, best first
    gates: torch.Tensor  # [N, k] softmax over the chosen experts' logits
    kept: torch.Tensor  # [N, k] False where the expert's capacity dropped the assignment
    balance: torch.Tensor  # scalar: cv²(importance) + cv²(load)

    def counts(self, n_experts: int) -> torch.Tensor:
        """Assignments per expert ``[E]`` (kept ones only)."""
        return torch.bincount(self.indices[self.kept], minlength=n_experts)


def cv_squared(values: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation (population variance / mean²); 0 for equal values."""
    values = values.float()
    return values.var(correction=0) / (values.mean() ** 2 + 1e-10)


def load_balancing_loss(importance: torch.Tensor, load: torch.Tensor) -> torch.Tensor:
    """``cv²(importance) + cv²(load)`` over the experts (both ``[E]``); 0 iff both are uniform."""
    return cv_squared(importance) + cv_squared(load)


def specialization_loss(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy of the router logits ``[N, E]`` toward the expert ``target [N]`` of each token,
    over the tokens where ``mask`` is True (0 when there is none)."""
    if mask is not None:
        logits, target = logits[mask], target[mask]
    if len(target) == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), target)


class TopKRouter(nn.Module):
    """``n_routers`` linear routers over ``n_experts``; top-k with a softmax over the chosen ones."""

    def __init__(
        self, dim: int, n_experts: int, top_k: int, noisy: bool = True, n_routers: int = 1
    ):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k {top_k} must be between 1 and n_experts {n_experts}")
        self.n_experts, self.top_k, self.noisy = n_experts, top_k, noisy
        self.weight = nn.Parameter(torch.randn(n_routers, dim, n_experts) * dim**-0.5)
        # zero noise weights: softplus(0) = 0.69, the noise starts moderate and is learned
        self.noise = nn.Parameter(torch.zeros(n_routers, dim, n_experts)) if noisy else None

    @property
    def n_routers(self) -> int:
        return self.weight.shape[0]

    def _project(self, x: torch.Tensor, weight: torch.Tensor, router) -> torch.Tensor:
        """``x [N, D]`` through router ``router [N]`` (None: router 0) -> ``[N, E]``."""
        if router is None or self.n_routers == 1:
            return x @ weight[0]
        dim, n_experts = weight.shape[1:]
        every = (x @ weight.permute(1, 0, 2).reshape(dim, -1)).view(len(x), -1, n_experts)
        return every.gather(1, router.view(-1, 1, 1).expand(-1, 1, n_experts)).squeeze(1)

    def forward(self, x: torch.Tensor, router: torch.Tensor | None = None) -> Routing:
        clean = self._project(x, self.weight, router)
        noisy_training = self.noisy and self.training
        if noisy_training:
            scale = F.softplus(self._project(x, self.noise, router)) + NOISE_EPSILON
            logits = clean + torch.randn_like(clean) * scale
        else:
            logits = clean
        k = self.top_k
        top_logits, top_indices = logits.topk(min(k + 1, self.n_experts), dim=1)
        gates = torch.softmax(top_logits[:, :k], dim=1)
        indices = top_indices[:, :k]
        full_gates = torch.zeros_like(logits).scatter(1, indices, gates)
        importance = full_gates.sum(dim=0)
        if noisy_training and k < self.n_experts:
            load = self._smooth_load(clean, logits, scale, top_logits)
        else:
            load = torch.bincount(indices.flatten(), minlength=self.n_experts).to(logits.dtype)
        kept = torch.ones_like(indices, dtype=torch.bool)
        return Routing(logits, indices, gates, kept, load_balancing_loss(importance, load))

    def _smooth_load(self, clean, noisy, scale, top_logits) -> torch.Tensor:
        """``sum_n P(expert e in the top k of token n)`` under the noise (Shazeer et al. eq. 9)."""
        k = self.top_k
        threshold_if_in = top_logits[:, k : k + 1]  # an expert that is in must beat the (k+1)-th
        threshold_if_out = top_logits[:, k - 1 : k]  # one that is out must beat the k-th
        normal = torch.distributions.Normal(0.0, 1.0)
        is_in = noisy > threshold_if_in
        probability = torch.where(
            is_in,
            normal.cdf((clean - threshold_if_in) / scale),
            normal.cdf((clean - threshold_if_out) / scale),
        )
        return probability.sum(dim=0)


class ExpertMLPs(nn.Module):
    """``E`` two-layer GELU MLPs (``nn.Linear`` layout, stacked): rows grouped by expert in, each
    group through its own expert (one matmul pair per expert, never per sample)."""

    def __init__(self, n_experts: int, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(n_experts, hidden, dim))
        self.b1 = nn.Parameter(torch.empty(n_experts, hidden))
        self.w2 = nn.Parameter(torch.empty(n_experts, dim, hidden))
        self.b2 = nn.Parameter(torch.empty(n_experts, dim))
        for weight, bias, fan_in in ((self.w1, self.b1, dim), (self.w2, self.b2, hidden)):
            bound = 1 / math.sqrt(fan_in)  # nn.Linear's default initialisation
            nn.init.uniform_(weight, -bound, bound)
            nn.init.uniform_(bias, -bound, bound)
        self.dropout = nn.Dropout(dropout)

    def forward(self, grouped: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """``grouped [A, D]``: the rows of expert 0, then of expert 1, ... (``counts`` rows each)."""
        outputs = []
        for expert, rows in enumerate(grouped.split(counts)):
            hidden = F.gelu(F.linear(rows, self.w1[expert], self.b1[expert]))
            outputs.append(F.linear(self.dropout(hidden), self.w2[expert], self.b2[expert]))
        return torch.cat(outputs)


class SparseMoE(nn.Module):
    """Top-k sparse mixture of two-layer GELU MLP experts over tokens ``[..., dim]`` (module doc)."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        n_experts: int,
        top_k: int,
        *,
        noisy: bool = True,
        n_routers: int = 1,
        capacity_factor: float | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        if capacity_factor is not None and capacity_factor <= 0:
            raise ValueError(f"capacity_factor must be positive (got {capacity_factor})")
        self.n_experts, self.top_k, self.capacity_factor = n_experts, top_k, capacity_factor
        self.router = TopKRouter(dim, n_experts, top_k, noisy, n_routers)
        self.experts = ExpertMLPs(n_experts, dim, hidden, dropout)
        self.register_buffer("activation_counts", torch.zeros(n_experts), persistent=False)
        self.last_routing: Routing | None = None

    def reset_counts(self) -> None:
        self.activation_counts.zero_()

    def capacity(self, n_tokens: int) -> int | None:
        """Assignments an expert may take in this call (None: no limit; always so in evaluation)."""
        if self.capacity_factor is None or not self.training:
            return None
        return math.ceil(self.capacity_factor * n_tokens * self.top_k / self.n_experts)

    def forward(self, x: torch.Tensor, router: torch.Tensor | None = None) -> torch.Tensor:
        """``x [..., dim]`` -> the same shape; ``router`` (``[...]``, long) picks each token's router."""
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        if router is not None:
            router = router.reshape(-1)
        routing = self.router(tokens, router)
        n, k, n_experts = len(tokens), self.top_k, self.n_experts
        assigned = routing.indices.reshape(-1)  # [N k], token-major
        order = torch.argsort(assigned, stable=True)  # grouped by expert, token order within
        capacity = self.capacity(n)
        if capacity is not None:
            expert_of = assigned[order]
            counts = torch.bincount(assigned, minlength=n_experts)
            rank = (
                torch.arange(len(order), device=x.device) - (counts.cumsum(0) - counts)[expert_of]
            )
            order = order[rank < capacity]
        counts = torch.bincount(assigned[order], minlength=n_experts)
        token_of = order // k
        expert_out = self.experts(tokens.index_select(0, token_of), counts.tolist())
        gate = routing.gates.reshape(-1).index_select(0, order).unsqueeze(1)
        out = tokens.new_zeros(n, shape[-1]).index_add(0, token_of, expert_out * gate.to(x.dtype))
        kept = torch.zeros(n * k, dtype=torch.bool, device=x.device).index_fill(0, order, True)
        routing.kept = kept.view(n, k)
        self.last_routing = routing
        with torch.no_grad():
            self.activation_counts += counts.to(self.activation_counts.dtype)
        return out.view(shape)
