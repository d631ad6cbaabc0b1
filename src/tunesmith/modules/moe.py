"""Mixture-of-experts feed-forward: top-k router, grouped experts, auxiliary losses.

``MoE(router, experts, shared_expert=None)`` replaces a layer's ``FeedForward``
(``x [b, s, d] -> [b, s, d]``). Tokens are never dropped (no capacity factor): every token is
sent to its ``k`` experts. The experts' weights are grouped tensors ``[n_experts, ...]`` run
with one ``torch._grouped_mm`` per projection where the device / dtype support it, else a
loop over experts (same numbers; see ``GroupedExperts``).

Each ``MoE`` keeps the router logits and choices of its last forward (``last_routing``); the
model-level helpers ``router_aux_loss`` (Switch / Mixtral load balancing, equal to
transformers' ``load_balancing_loss_func``), ``router_z_loss`` (ST-MoE) and ``router_stats``
(per-expert token fractions for the metrics) read them after a forward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tunesmith.modules.feed_forward import ACTIVATIONS, FeedForward

__all__ = [
    "TopKRouter",
    "GroupedExperts",
    "MoE",
    "FeedForwardWithExperts",
    "Routing",
    "moe_layers",
    "router_aux_loss",
    "router_z_loss",
    "router_stats",
    "grouped_mm_supported",
    "active_parameter_count",
]

SCORINGS = ("softmax", "sigmoid")


@dataclass
class Routing:
    """One forward's routing: ``logits [T, E]`` (T = b * s tokens), ``indices [T, k]``."""

    logits: Tensor
    indices: Tensor


class TopKRouter(nn.Module):
    """Score every expert per token and keep the ``top_k`` best.

    Args:
        dim: model width ``d``.
        num_experts: ``E``.
        top_k: experts per token ``k``.
        scoring: ``"softmax"`` (over all experts, in fp32; Qwen3-MoE, Mixtral) or
            ``"sigmoid"`` (independent per expert; Llama 4).
        norm_topk: divide the kept ``k`` scores by their sum (Mixtral; Qwen3-MoE's
            ``norm_topk_prob``).
        bias: a bias on the gate projection.
        input_norm_eps: set (Gemma 4): the gate sees ``rms_norm(x) * scale * d ** -0.5``
            (weightless RMS norm with this epsilon, a learned ``scale [d]``).
        per_expert_scale: multiply each kept weight by a learned ``per_expert_scale [E]`` of
            its expert, after ``norm_topk`` (Gemma 4).

    ``forward(x [T, d]) -> (weights [T, k] in x's dtype, indices [T, k] long, logits [T, E])``.
    """

    def __init__(
        self,
        dim: int,
        num_experts: int,
        top_k: int,
        *,
        scoring: str = "softmax",
        norm_topk: bool = True,
        bias: bool = False,
        input_norm_eps: float | None = None,
        per_expert_scale: bool = False,
    ):
        super().__init__()
        if scoring not in SCORINGS:
            raise ValueError(f"router scoring {scoring!r}: choose one of {SCORINGS}")
        if not 0 < top_k <= num_experts:
            raise ValueError(f"top_k={top_k} must be in 1..num_experts={num_experts}")
        self.gate = nn.Linear(dim, num_experts, bias=bias)
        self.num_experts = num_experts
        self.top_k = top_k
        self.scoring = scoring
        self.norm_topk = norm_topk
        self.input_norm_eps = input_norm_eps
        self.scale = nn.Parameter(torch.ones(dim)) if input_norm_eps is not None else None
        self.per_expert_scale = nn.Parameter(torch.ones(num_experts)) if per_expert_scale else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.scale is not None:
            xf = x.float()
            normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.input_norm_eps)
            x = normed.to(x.dtype) * self.scale * x.shape[-1] ** -0.5
        logits = self.gate(x)
        if self.scoring == "softmax":
            scores = F.softmax(logits, dim=-1, dtype=torch.float32)
        else:
            scores = torch.sigmoid(logits.float())
        weights, indices = torch.topk(scores, self.top_k, dim=-1)
        if self.norm_topk:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        if self.per_expert_scale is not None:
            weights = weights * self.per_expert_scale[indices]
        return weights.to(x.dtype), indices, logits


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous (``_grouped_mm``'s
    backward rejects expanded / zero-stride gradients)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad.contiguous()


def _balanced_counts(rows: int, experts: int) -> Tensor:
    """``[experts]`` int64 (CPU) row counts summing to ``rows``, as even as they can be: what
    a meta forward (``tunesmith estimate``) routes, having no router scores to route by."""
    counts = torch.full((experts,), rows // experts, dtype=torch.int64)
    counts[: rows % experts] += 1
    return counts


def grouped_mm_supported(x: Tensor, *dims: int) -> bool:
    """Whether ``torch._grouped_mm`` runs ``x``'s device / dtype with inner sizes ``dims``.

    CPU: fp32 / bf16. CUDA: bf16 on compute capability >= 9.0 (Hopper). Meta: bf16. Every row
    stride must be a multiple of 16 bytes.
    """
    if not hasattr(torch, "_grouped_mm"):
        return False
    if any((n * x.element_size()) % 16 for n in dims):
        return False
    if x.device.type == "cpu":
        return x.dtype in (torch.float32, torch.bfloat16)
    if x.device.type == "meta":  # a memory estimate: torch's meta kernel takes bf16 only
        return x.dtype == torch.bfloat16
    if x.device.type == "cuda":
        return x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device)[0] >= 9
    return False


class GroupedExperts(nn.Module):
    """``E`` gated feed-forward experts with grouped weights (torchtune's layout).

    Parameters: ``gate_proj [E, d, f]``, ``up_proj [E, d, f]``, ``down_proj [E, f, d]``
    (and ``gate_bias``, ``up_bias [E, f]``, ``down_bias [E, d]`` with ``bias``); expert ``e``
    computes ``glu(x @ gate_proj[e], x @ up_proj[e]) @ down_proj[e]`` with
    ``glu(g, u) = act(g) * u``, or with ``swiglu_limit`` gpt-oss's clamped form
    ``(clamp(u, -L, L) + 1) * g' * sigmoid(alpha * g')``, ``g' = min(g, L)``.

    Args:
        dim: ``d``. hidden_dim: ``f``. num_experts: ``E``.
        activation: a ``feed_forward.ACTIVATIONS`` name.
        bias: biases on the three projections (gpt-oss).
        swiglu_limit, swiglu_alpha: gpt-oss's clamped SwiGLU (``activation`` unused).
        use_grouped_mm: True / False forces the path; None (default) uses
            ``torch._grouped_mm`` where ``grouped_mm_supported`` says it runs, else the loop.

    ``forward(x [N, d] rows sorted by expert, counts [E] rows per expert) -> [N, d]``.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        num_experts: int,
        *,
        activation: str = "silu",
        use_grouped_mm: bool | None = None,
        bias: bool = False,
        swiglu_limit: float | None = None,
        swiglu_alpha: float = 1.702,
    ):
        super().__init__()
        self.gate_proj = nn.Parameter(torch.empty(num_experts, dim, hidden_dim))
        self.up_proj = nn.Parameter(torch.empty(num_experts, dim, hidden_dim))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_dim, dim))
        self.gate_bias = self.up_bias = self.down_bias = None
        if bias:
            self.gate_bias = nn.Parameter(torch.zeros(num_experts, hidden_dim))
            self.up_bias = nn.Parameter(torch.zeros(num_experts, hidden_dim))
            self.down_bias = nn.Parameter(torch.zeros(num_experts, dim))
        self.swiglu_limit = swiglu_limit
        self.swiglu_alpha = swiglu_alpha
        if activation not in ACTIVATIONS:
            raise ValueError(f"Unknown activation {activation!r}; choose one of {ACTIVATIONS}")
        self.act: Callable[[Tensor], Tensor] = ACTIVATIONS[activation]
        self.num_experts = num_experts
        self.use_grouped_mm = use_grouped_mm
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in (self.gate_proj, self.up_proj, self.down_proj):
            nn.init.normal_(p, std=p.shape[1] ** -0.5)

    def _glu(self, g: Tensor, u: Tensor) -> Tensor:
        if self.swiglu_limit is None:
            return self.act(g) * u
        limit = self.swiglu_limit
        g = g.clamp(max=limit)
        return (u.clamp(-limit, limit) + 1) * (g * torch.sigmoid(g * self.swiglu_alpha))

    def _grouped_mm_fn(self, counts: Tensor, rows: int) -> Callable[..., Tensor]:
        """``mm(a [N, i], w [E, i, o], b [E, o] | None) -> [N, o]``, one ``_grouped_mm``."""
        counts = counts.to(self.gate_proj.device)  # a meta estimate's counts are on the CPU
        offs = torch.cumsum(counts, dim=0).to(torch.int32)
        expert_of_row = None

        def mm(a: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
            nonlocal expert_of_row
            out = _ContiguousGrad.apply(torch._grouped_mm(a, w.to(a.dtype), offs=offs))
            if b is None:
                return out
            if expert_of_row is None:  # the expert of every row, for its bias
                experts = torch.arange(self.num_experts, device=a.device)
                expert_of_row = torch.repeat_interleave(experts, counts, output_size=rows)
            return out + b[expert_of_row].to(out.dtype)

        return mm

    @staticmethod
    def _loop_mm_fn(counts: Tensor) -> Callable[..., Tensor]:
        """The same ``mm`` as one matmul per expert (any device / dtype)."""
        sizes = counts.tolist()

        def mm(a: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
            outs = []
            for e, part in enumerate(a.split(sizes, dim=0)):
                if part.shape[0]:
                    out = part @ w[e].to(part.dtype)
                    outs.append(out if b is None else out + b[e].to(out.dtype))
            return torch.cat(outs) if outs else a.new_zeros(0, w.shape[-1])

        return mm

    def adapt_gate_up(
        self, x: Tensor, gate: Tensor, up: Tensor, mm: Callable[..., Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Hook for adapters (``LoRAGroupedExperts``): the gate / up projections ``[N, f]`` of
        ``x [N, d]``; ``mm`` is the forward's per-expert matmul. The base returns them as is."""
        return gate, up

    def adapt_down(self, h: Tensor, out: Tensor, mm: Callable[..., Tensor]) -> Tensor:
        """Hook for adapters: the down projection ``out [N, d]`` of ``h [N, f]``."""
        return out

    def forward(self, x: Tensor, counts: Tensor) -> Tensor:
        grouped = self.use_grouped_mm
        if grouped is None:
            grouped = grouped_mm_supported(x, *self._inner_dims())
        mm = self._grouped_mm_fn(counts, x.shape[0]) if grouped else self._loop_mm_fn(counts)
        gate = mm(x, self.gate_proj, self.gate_bias)
        up = mm(x, self.up_proj, self.up_bias)
        h = self._glu(*self.adapt_gate_up(x, gate, up, mm))
        return self.adapt_down(h, mm(h, self.down_proj, self.down_bias), mm)

    def _inner_dims(self) -> tuple[int, ...]:
        """Row widths the grouped matmuls see (each must be a multiple of 16 bytes)."""
        return (self.gate_proj.shape[1], self.gate_proj.shape[2])


class MoE(nn.Module):
    """Route each token to ``k`` experts, add the shared expert if any.

    ``out[t] = sum_j weights[t, j] * expert_{indices[t, j]}(x[t]) (+ shared_expert(x[t]))``.

    Args:
        router: a ``TopKRouter``.
        experts: a ``GroupedExperts``.
        shared_expert: a ``FeedForward`` every token also goes through (None: none).
        weight_inputs: scale each routed token's input by its router weight instead of the
            expert's output (Llama 4; the same for linear experts, not for SwiGLU ones).

    Shapes: ``x [b, s, d] -> [b, s, d]``. After each forward ``last_routing`` holds the
    router logits ``[b * s, E]`` and choices ``[b * s, k]`` for the auxiliary losses.
    """

    def __init__(
        self,
        *,
        router: TopKRouter,
        experts: GroupedExperts,
        shared_expert: nn.Module | None = None,
        weight_inputs: bool = False,
    ):
        super().__init__()
        self.router = router
        self.experts = experts
        self.shared_expert = shared_expert
        self.weight_inputs = weight_inputs
        self.last_routing: Routing | None = None
        # a process group when the experts are split over ranks (training.expert_parallel)
        self.expert_group: object | None = None

    def _run_experts(self, x: Tensor, counts: Tensor) -> Tensor:
        if self.expert_group is None:
            return self.experts(x, counts)
        from tunesmith.training.expert_parallel import dispatch

        return dispatch(self.experts, x, counts, self.expert_group)

    def forward(self, x: Tensor, expert_input: Tensor | None = None) -> Tensor:
        """``x [b, s, d]``; ``expert_input [b, s, d]`` set: the experts (and shared expert)
        see it while the router sees ``x`` (Gemma 4 norms the experts' input only)."""
        shape = x.shape
        weights, indices, logits = self.router(x.reshape(-1, shape[-1]))
        flat = (x if expert_input is None else expert_input).reshape(-1, shape[-1])
        self.last_routing = Routing(logits=logits, indices=indices)
        k = indices.shape[-1]
        choice = indices.reshape(-1)  # [T * k]
        order = torch.argsort(choice, stable=True)
        token = order // k
        if choice.is_meta:  # a memory estimate (no routing data): every expert as busy
            counts = _balanced_counts(choice.numel(), self.router.num_experts)
        else:
            counts = torch.bincount(choice, minlength=self.router.num_experts)
        w = weights.reshape(-1)[order, None]
        if self.weight_inputs:
            y = self._run_experts(flat[token] * w, counts)
        else:
            y = self._run_experts(flat[token], counts) * w
        out = torch.zeros_like(flat).index_add_(0, token, y.to(flat.dtype))
        if self.shared_expert is not None:
            out = out + self.shared_expert(flat)
        return out.reshape(shape)


class FeedForwardWithExperts(FeedForward):
    """Gemma 4's feed-forward: a dense gated MLP and a mixture of experts side by side.

    ``forward(x, residual)`` = ``dense_out_norm(mlp(x)) + expert_out_norm(moe(residual))``
    with ``x`` the layer's pre-feed-forward-normed input (the dense path's) and ``residual``
    the un-normed one: the router sees it directly, the experts through ``expert_in_norm``.
    The dense projections keep ``FeedForward``'s names (``w1`` / ``w2`` / ``w3``).

    Shapes: ``x, residual [b, s, d] -> [b, s, d]``.
    """

    def __init__(
        self,
        *,
        gate_proj: nn.Module,
        down_proj: nn.Module,
        up_proj: nn.Module,
        activation: str,
        moe: MoE,
        dense_out_norm: nn.Module,
        expert_in_norm: nn.Module,
        expert_out_norm: nn.Module,
    ):
        super().__init__(
            gate_proj=gate_proj, down_proj=down_proj, up_proj=up_proj, activation=activation
        )
        self.moe = moe
        self.dense_out_norm = dense_out_norm
        self.expert_in_norm = expert_in_norm
        self.expert_out_norm = expert_out_norm

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if residual is None:
            raise ValueError("FeedForwardWithExperts needs the layer's un-normed input")
        experts = self.moe(residual, self.expert_in_norm(residual))
        return self.dense_out_norm(super().forward(x)) + self.expert_out_norm(experts)


def moe_layers(model: nn.Module) -> Iterator[MoE]:
    """Every ``MoE`` module of ``model`` in module order."""
    return (m for m in model.modules() if isinstance(m, MoE))


def active_parameter_count(model: nn.Module) -> int:
    """Parameters one token uses: every parameter outside the experts plus ``k / E`` of each
    MoE layer's expert parameters (the "A3B" of Qwen3-30B-A3B; works on the meta device)."""
    expert_ids = set()
    active = 0.0
    for moe in moe_layers(model):
        params = list(moe.experts.parameters())
        expert_ids.update(id(p) for p in params)
        share = moe.router.top_k / moe.router.num_experts
        active += share * sum(p.numel() for p in params)
    rest = sum(p.numel() for p in model.parameters() if id(p) not in expert_ids)
    return rest + round(active)


def _routings(model: nn.Module) -> list[tuple[MoE, Routing]]:
    return [(m, m.last_routing) for m in moe_layers(model) if m.last_routing is not None]


def _flat_mask(mask: Tensor | None, rows: int, device: torch.device) -> Tensor | None:
    if mask is None:
        return None
    flat = mask.reshape(-1).to(device=device, dtype=torch.float32)
    if flat.numel() != rows:
        raise ValueError(f"token mask has {flat.numel()} entries for {rows} routed tokens")
    return flat


def router_aux_loss(model: nn.Module, token_mask: Tensor | None = None) -> Tensor | None:
    """Switch / Mixtral load-balancing loss over every MoE layer's last forward.

    ``E * sum_e f_e * P_e`` with ``f_e`` the fraction of (token, choice) assignments to
    expert ``e`` times ``k`` and ``P_e`` the mean softmax probability of ``e``, both pooled
    over all layers first, exactly as transformers' ``load_balancing_loss_func``
    (``token_mask [b, s]``, True / 1 = real token, is its ``attention_mask``). The
    probabilities are the softmax of the router logits for every scoring. None when the
    model has no routed forward.
    """
    routed = _routings(model)
    if not routed:
        return None
    n_exp = routed[0][0].router.num_experts
    device = routed[0][1].logits.device
    counts = torch.zeros(n_exp, device=device)
    probs = torch.zeros(n_exp, device=device)
    rows = torch.zeros((), device=device)
    for _, r in routed:
        p = F.softmax(r.logits.float(), dim=-1)
        m = _flat_mask(token_mask, p.shape[0], device)
        w = torch.ones(p.shape[0], device=device) if m is None else m
        k = r.indices.shape[-1]
        counts = counts.scatter_add(0, r.indices.reshape(-1), w.repeat_interleave(k))
        probs = probs + (p * w[:, None]).sum(dim=0)
        rows = rows + w.sum()
    return (counts / rows * (probs / rows)).sum() * n_exp


def router_z_loss(model: nn.Module, token_mask: Tensor | None = None) -> Tensor | None:
    """ST-MoE router z-loss: mean over tokens and layers of ``logsumexp(logits) ** 2``."""
    routed = _routings(model)
    if not routed:
        return None
    total = 0.0
    for _, r in routed:
        z = torch.logsumexp(r.logits.float(), dim=-1) ** 2
        m = _flat_mask(token_mask, z.shape[0], z.device)
        total = total + (z.mean() if m is None else (z * m).sum() / m.sum().clamp(min=1))
    return total / len(routed)


@torch.no_grad()
def router_stats(model: nn.Module) -> dict[str, float]:
    """Per-expert token fractions of the last forward, pooled over layers, for the metrics.

    ``router/expert_frac_max`` and ``_min`` (1 / E each when perfectly balanced) and
    ``router/expert_frac_<e>`` for every expert; empty without MoE layers.
    """
    routed = _routings(model)
    if not routed:
        return {}
    n_exp = routed[0][0].router.num_experts
    counts = sum(
        torch.bincount(r.indices.reshape(-1), minlength=n_exp).float().cpu() for _, r in routed
    )
    frac = counts / counts.sum().clamp(min=1)
    stats = {
        "router/expert_frac_max": frac.max().item(),
        "router/expert_frac_min": frac.min().item(),
    }
    stats.update({f"router/expert_frac_{e}": v for e, v in enumerate(frac.tolist())})
    return stats
