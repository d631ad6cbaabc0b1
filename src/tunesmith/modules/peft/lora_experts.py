"""LoRA on grouped experts: one low-rank adapter per expert, in PEFT's fused layout.

``LoRAGroupedExperts`` is a ``GroupedExperts`` (frozen base, same keys) plus two per-expert
adapters laid out as PEFT's ``target_parameters`` LoRA on transformers' fused expert weights
(``experts.gate_up_proj [E, 2f, d]``, ``experts.down_proj [E, d, f]``):

- ``gate_up.lora_a.weight [E, r, d]``, ``gate_up.lora_b.weight [E, 2f, r]``: expert ``e``'s
  gate and up projections gain ``s * x A_e^T B_e^T`` split in halves (gate, then up), i.e. one
  rank-``r`` update of the concatenated ``[gate; up]`` matrix, as PEFT adapts ``gate_up_proj``;
- ``down.lora_a.weight [E, r, f]``, ``down.lora_b.weight [E, d, r]``: the down projection
  gains ``s * h A_e^T B_e^T``;

with ``s = alpha / rank``. ``A`` starts kaiming-uniform (``a = sqrt(5)``), ``B`` zeros, so a
fresh adapter leaves the experts unchanged. The low-rank products run through the forward's
own per-expert matmul (``torch._grouped_mm`` or the loop), never materialising an
``[E, d, f]`` delta. PEFT's expert LoRA has no dropout, so neither has this one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from tunesmith.modules.moe import GroupedExperts

__all__ = ["LoRAGroupedExperts", "merge_expert_lora"]


class _Stacked(nn.Module):
    """A holder for one stacked factor, so its key ends in ``.lora_a.weight`` / ``.lora_b.weight``."""

    def __init__(self, *shape: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(*shape))


class _ExpertAdapter(nn.Module):
    """Per-expert ``lora_a.weight [E, r, in]`` and ``lora_b.weight [E, out, r]``."""

    def __init__(self, num_experts: int, in_dim: int, out_dim: int, rank: int):
        super().__init__()
        self.lora_a = _Stacked(num_experts, rank, in_dim)
        self.lora_b = _Stacked(num_experts, out_dim, rank)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for a in self.lora_a.weight:  # each expert's A like an nn.Linear(in, r) weight
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b.weight)

    def low_rank(self, x: Tensor, mm: Callable[..., Tensor], scaling: float) -> Tensor:
        """``[N, in] -> [N, out]``: ``scaling * x A_e^T B_e^T`` for each row's expert ``e``."""
        t = mm(x, self.lora_a.weight.transpose(1, 2).contiguous())
        return mm(t, self.lora_b.weight.transpose(1, 2).contiguous()) * scaling

    def delta(self, scaling: float) -> Tensor:
        """The dense update in native layout ``[E, in, out]`` (``A^T B^T`` per expert)."""
        a, b = self.lora_a.weight.float(), self.lora_b.weight.float()
        return scaling * torch.bmm(a.transpose(1, 2), b.transpose(1, 2))


class LoRAGroupedExperts(GroupedExperts):
    """``GroupedExperts`` with per-expert LoRA adapters (see the module docstring).

    Args: ``GroupedExperts``' plus ``rank``, ``alpha`` (update scaled by ``alpha / rank``).
    ``forward(x [N, d] sorted by expert, counts [E]) -> [N, d]``; ``disabled = True`` runs the
    base experts only (DPO's reference model).
    """

    def __init__(
        self, dim: int, hidden_dim: int, num_experts: int, *, rank: int, alpha: float, **kwargs
    ):
        super().__init__(dim, hidden_dim, num_experts, **kwargs)
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank
        self.disabled = False
        self.gate_up = _ExpertAdapter(num_experts, dim, 2 * hidden_dim, rank)
        self.down = _ExpertAdapter(num_experts, hidden_dim, dim, rank)

    def adapter_params(self) -> list[str]:
        return [f"{p}.lora_{ab}.weight" for p in ("gate_up", "down") for ab in ("a", "b")]

    def _inner_dims(self) -> tuple[int, ...]:
        return (*super()._inner_dims(), self.rank)

    def initial_adapter_state(
        self, generator: torch.Generator, loaded: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """Fresh full CPU tensors for the adapter keys ``loaded`` lacks, drawn from
        ``generator``: each expert's ``A [r, in]`` kaiming-uniform (a=sqrt(5)), ``B`` zeros.
        Works on a meta (or sharded) module: only shapes and dtypes are read."""
        out: dict[str, Tensor] = {}
        for name in ("gate_up", "down"):
            adapter = getattr(self, name)
            a_like, b_like = adapter.lora_a.weight, adapter.lora_b.weight
            if f"{name}.lora_a.weight" not in loaded:
                a = torch.empty(a_like.shape, dtype=a_like.dtype, device="cpu")
                for expert in a:
                    nn.init.kaiming_uniform_(expert, a=math.sqrt(5), generator=generator)
                out[f"{name}.lora_a.weight"] = a
            if f"{name}.lora_b.weight" not in loaded:
                out[f"{name}.lora_b.weight"] = torch.zeros(
                    b_like.shape, dtype=b_like.dtype, device="cpu"
                )
        return out

    def adapt_gate_up(
        self, x: Tensor, gate: Tensor, up: Tensor, mm: Callable[..., Tensor]
    ) -> tuple[Tensor, Tensor]:
        if self.disabled:
            return gate, up
        delta = self.gate_up.low_rank(x, mm, self.scaling).to(gate.dtype)
        f = gate.shape[-1]
        return gate + delta[:, :f], up + delta[:, f:]

    def adapt_down(self, h: Tensor, out: Tensor, mm: Callable[..., Tensor]) -> Tensor:
        if self.disabled:
            return out
        return out + self.down.low_rank(h, mm, self.scaling).to(out.dtype)

    @torch.no_grad()
    def to_experts(self) -> GroupedExperts:
        """A plain ``GroupedExperts`` with the adapters merged into its weights."""
        merged = GroupedExperts.__new__(GroupedExperts)
        nn.Module.__init__(merged)
        for name, value in vars(self).items():
            if not name.startswith("_") and name not in ("rank", "alpha", "scaling", "disabled"):
                setattr(merged, name, value)
        merged.gate_bias, merged.up_bias, merged.down_bias = (
            self.gate_bias,
            self.up_bias,
            self.down_bias,
        )
        f = self.gate_proj.shape[-1]
        gu = self.gate_up.delta(self.scaling)
        for name, weight in (
            ("gate_proj", self.gate_proj.float() + gu[..., :f]),
            ("up_proj", self.up_proj.float() + gu[..., f:]),
            ("down_proj", self.down_proj.float() + self.down.delta(self.scaling)),
        ):
            base = getattr(self, name)
            setattr(merged, name, nn.Parameter(weight.to(base.dtype), base.requires_grad))
        return merged


def merge_expert_lora(state_dict: dict[str, Tensor], prefix: str, scaling: float) -> None:
    """Fold the expert adapters at ``prefix`` (``"layers.0.mlp.experts."``) of a native state
    dict into its ``gate_proj`` / ``up_proj`` / ``down_proj`` and drop the adapter keys (in
    place; fp32 math, cast back to the base dtype)."""

    def pop_delta(name: str) -> Tensor:
        a = state_dict.pop(f"{prefix}{name}.lora_a.weight").float()
        b = state_dict.pop(f"{prefix}{name}.lora_b.weight").float()
        return scaling * torch.bmm(a.transpose(1, 2), b.transpose(1, 2))

    gate = state_dict[f"{prefix}gate_proj"]
    f = gate.shape[-1]
    gu, down = pop_delta("gate_up"), pop_delta("down")
    for name, delta in (("gate_proj", gu[..., :f]), ("up_proj", gu[..., f:]), ("down_proj", down)):
        base = state_dict[prefix + name]
        state_dict[prefix + name] = (base.float() + delta).to(base.dtype)
