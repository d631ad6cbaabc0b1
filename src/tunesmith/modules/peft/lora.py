"""LoRA: a frozen linear layer plus a trainable low-rank update (Hu et al., 2021).

``y = x W^T + b + (alpha / rank) * B(A(dropout(x)))`` with ``A: [rank, in]`` initialised like
PEFT (kaiming-uniform, ``a = sqrt(5)``) and ``B: [out, rank]`` zeros, so a fresh adapter leaves
the base layer's output unchanged. With ``quantize_base=True`` the frozen weight is stored as a
torchao NF4 tensor (QLoRA); ``state_dict()`` still returns it as a plain tensor in its original
dtype, and ``load_state_dict`` re-quantizes plain tensors on the way in.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.modules.peft._nf4 import (
    dequantize,
    dequantize_state_dict_post_hook,
    is_nf4,
    nf4_linear,
    quantize_nf4,
)


def add_low_rank_(
    out: torch.Tensor, low_rank: torch.Tensor, lora_b: torch.Tensor, scaling: float
) -> None:
    """``out [..., out_dim] += scaling * low_rank [..., rank] @ lora_b[out_dim, rank].T``.

    One in-place GEMM, so no ``[..., out_dim]`` temporaries; autograd-safe because the base
    matmul that produced ``out`` does not keep its output for backward. Operands are cast to
    ``out``'s dtype (in-place ops are not autocast).
    """
    mat1 = low_rank.reshape(-1, low_rank.shape[-1]).to(out.dtype)
    out.view(-1, out.shape[-1]).addmm_(mat1, lora_b.to(out.dtype).t(), alpha=scaling)


class LoRALinear(nn.Module):
    """Linear layer ``[..., in_dim] -> [..., out_dim]`` with a LoRA adapter.

    State-dict keys: ``weight [out, in]`` (frozen base), ``bias [out]`` (if ``use_bias``),
    ``lora_a.weight [rank, in]``, ``lora_b.weight [out, rank]``.

    Args:
        in_dim: input features.
        out_dim: output features.
        rank: rank of the update.
        alpha: scaling numerator; the update is scaled by ``alpha / rank``.
        dropout: dropout on the adapter's input (the base path never sees dropout).
        use_bias: whether the frozen base has a bias.
        quantize_base: store the frozen base weight in NF4 (QLoRA).
        block_size, scaler_block_size: torchtune's ``quantization_kwargs`` for the NF4 base
            (values per scale, scales per double-quantization group; default 64 and 256);
            only with ``quantize_base``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        use_bias: bool = False,
        quantize_base: bool = False,
        *,
        block_size: int | None = None,
        scaler_block_size: int | None = None,
    ) -> None:
        super().__init__()
        nf4_args = {"block_size": block_size, "scaler_block_size": scaler_block_size}
        nf4_args = {k: v for k, v in nf4_args.items() if v is not None}
        if nf4_args and not quantize_base:
            raise ValueError(
                "``quantize_base`` is False, but received the following quantization "
                f"arguments: {nf4_args}; set quantize_base=True or drop them"
            )
        if rank <= 0:
            raise ValueError(f"LoRA rank must be a positive integer, got lora_rank={rank}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got lora_dropout={dropout}")
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.rank = rank
        self.alpha = alpha
        self.scaling = alpha / rank
        self.use_bias = use_bias
        self._quantize_base = quantize_base
        self._nf4_args = nf4_args
        self.disabled = False
        # Set by tensor parallelism for an NF4 base (training._tp_nf4): ``(module, x) -> y``
        # on the local pieces, with the collectives of the layer's role.
        self.tp_forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None

        base = nn.Linear(in_dim, out_dim, bias=use_bias)
        weight = quantize_nf4(base.weight, **nf4_args) if quantize_base else base.weight.detach()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(base.bias.detach(), requires_grad=False) if use_bias else None
        self.dropout = nn.Dropout(p=dropout) if dropout > 0.0 else nn.Identity()
        self.lora_a = nn.Linear(in_dim, rank, bias=False)
        self.lora_b = nn.Linear(rank, out_dim, bias=False)
        self.initialize_parameters()
        if quantize_base:
            self.register_state_dict_post_hook(dequantize_state_dict_post_hook)

    def initialize_parameters(self) -> None:
        """(Re-)initialise the adapter: ``lora_a`` kaiming-uniform (a=sqrt(5)), ``lora_b`` zeros."""
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b.weight)

    def adapter_params(self) -> list[str]:
        """Names of the trainable adapter parameters, relative to this module."""
        return ["lora_a.weight", "lora_b.weight"]

    def initial_adapter_state(
        self, generator: torch.Generator, loaded: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Fresh full CPU adapter tensors for the keys ``loaded`` lacks, drawn from
        ``generator`` as :meth:`initialize_parameters` draws them: ``lora_a.weight
        [rank, in]`` kaiming-uniform (a=sqrt(5)), ``lora_b.weight [out, rank]`` zeros. Works on
        a meta (or sharded) module: only the shapes and dtypes are read."""
        out: dict[str, torch.Tensor] = {}
        if "lora_a.weight" not in loaded:
            a = torch.empty(self.rank, self.in_dim, dtype=self.lora_a.weight.dtype, device="cpu")
            out["lora_a.weight"] = nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        if "lora_b.weight" not in loaded:
            out["lora_b.weight"] = torch.zeros(
                self.out_dim, self.rank, dtype=self.lora_b.weight.dtype, device="cpu"
            )
        return out

    def extra_repr(self) -> str:
        return (
            f"in_dim={self.in_dim}, out_dim={self.out_dim}, rank={self.rank}, alpha={self.alpha}, "
            f"use_bias={self.use_bias}, quantize_base={self._quantize_base}"
        )

    def _base_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., in] -> [..., out]`` through the frozen base, without the bias."""
        if is_nf4(self.weight):
            return nf4_linear(x, self.weight)
        return F.linear(x, self.weight)

    def _add_bias(self, out: torch.Tensor) -> torch.Tensor:
        return out if self.bias is None else out + self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., in_dim] -> [..., out_dim]`` (under tensor parallelism with an NF4 base: the
        local pieces, see ``training._tp_nf4``)."""
        if self.tp_forward is not None:
            return self.tp_forward(self, x)
        if self.disabled:
            if is_nf4(self.weight):
                return self._add_bias(nf4_linear(x, self.weight))
            return F.linear(x, self.weight, self.bias)
        out = self._base_forward(x)
        low_rank = self.lora_a(self.dropout(x))  # [..., rank]
        if type(out).__name__ == "DTensor":  # tensor parallel: no in-place op on a shard
            return self._add_bias(out + self.scaling * F.linear(low_rank, self.lora_b.weight))
        add_low_rank_(out, low_rank, self.lora_b.weight, self.scaling)
        # the bias last, in place: adding the adapter in place to the output of a biased
        # F.linear (addmm) crashes the process under torch's MemTracker (torch 2.13), which
        # `tunesmith estimate` runs every step under
        return out if self.bias is None else out.add_(self.bias.to(out.dtype))

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """The base weight with the adapter folded in, ``[out, in]``, in the base dtype.

        Computed in fp32 so merging a bf16 model loses no more precision than the cast back.
        """
        base = dequantize(self.weight, torch.float32)
        delta = self.lora_b.weight.float() @ self.lora_a.weight.float()
        return (base + self.scaling * delta).to(self.weight.dtype)

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the adapter merged in (same device and base dtype)."""
        weight = self.merged_weight()
        linear = nn.Linear(
            self.in_dim, self.out_dim, bias=self.use_bias, device=weight.device, dtype=weight.dtype
        )
        with torch.no_grad():
            linear.weight.copy_(weight)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear
