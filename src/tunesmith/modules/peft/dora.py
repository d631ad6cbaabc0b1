"""DoRA: weight-decomposed low-rank adaptation (Liu et al., 2024), as PEFT implements it.

The adapted weight is ``W' = m * (W + s B A) / ||W + s B A||_row`` where the norm is taken
over the input dimension (one value per output feature) and ``m [out]`` is a trainable
magnitude. As the paper (section 4.3) and PEFT do, the norm is treated as a constant: it is
computed without gradient. ``m`` starts as ``||W + s B A||`` so a fresh adapter is the
identity; call :meth:`DoRALinear.initialize_dora_magnitude` after loading base weights.
"""

from __future__ import annotations

import torch
from torch import nn

from tunesmith.modules.peft._nf4 import dequantize, quantize_nf4
from tunesmith.modules.peft.lora import LoRALinear, add_low_rank_


class DoRALinear(LoRALinear):
    """Linear layer ``[..., in_dim] -> [..., out_dim]`` with a DoRA adapter.

    State-dict keys: those of :class:`LoRALinear` plus ``magnitude [out]``. The bias (if any)
    is added after the magnitude rescaling, as in PEFT.
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
        super().__init__(
            in_dim, out_dim, rank, alpha, dropout, use_bias, quantize_base,
            block_size=block_size, scaler_block_size=scaler_block_size,
        )  # fmt: skip
        self.magnitude = nn.Parameter(torch.empty(out_dim, dtype=self.weight.dtype))
        if not self.weight.is_meta:  # a meta model gets its magnitude after loading
            self.initialize_dora_magnitude()

    def adapter_params(self) -> list[str]:
        """Names of the trainable adapter parameters, relative to this module."""
        return ["lora_a.weight", "lora_b.weight", "magnitude"]

    def initial_adapter_state(
        self, generator: torch.Generator, loaded: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """LoRA's fresh tensors plus, unless loaded, ``magnitude [out]``: the row norms of
        ``W + s B A`` from the loaded base ``weight`` (NF4-rounded first under QLoRA, as the
        model will see it), as :meth:`initialize_dora_magnitude` computes them."""
        out = super().initial_adapter_state(generator, loaded)
        if "magnitude" in loaded:
            return out
        if "weight" not in loaded:
            raise KeyError("DoRA magnitude: the base weight is not in the checkpoint")
        weight = loaded["weight"].to(self.weight.dtype)  # what the model holds
        if self._quantize_base:
            weight = dequantize(quantize_nf4(weight, **self._nf4_args))
        a = {**loaded, **out}["lora_a.weight"].float()
        b = {**loaded, **out}["lora_b.weight"].float()
        norm = torch.linalg.norm(weight.float() + self.scaling * (b @ a), dim=1)
        out["magnitude"] = norm.to(self.magnitude.dtype)
        return out

    def _weight_norm(self, dtype: torch.dtype) -> torch.Tensor:
        """``||W + s B A||`` over the input dim, ``[out]``, with no gradient."""
        with torch.no_grad():
            weight = dequantize(self.weight, dtype)
            delta = self.lora_b.weight.to(dtype) @ self.lora_a.weight.to(dtype)
            return torch.linalg.norm(weight + self.scaling * delta, dim=1)

    @torch.no_grad()
    def initialize_dora_magnitude(self) -> None:
        """Set ``magnitude`` to the row norms of the current ``W + s B A`` (call after loading).

        Raises:
            RuntimeError: when the base or adapter weights are still on the meta device.
        """
        if any(p.is_meta for p in (self.weight, self.lora_a.weight, self.lora_b.weight)):
            raise RuntimeError(
                "Cannot initialize DoRA magnitude if base or LoRA parameters are still on the "
                "meta device: load or materialize the weights first"
            )
        self.magnitude.copy_(self._weight_norm(torch.float32).to(self.magnitude.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., in_dim] -> [..., out_dim]``."""
        base = self._base_forward(x)
        if self.disabled:
            return self._add_bias(base)
        dropped = self.dropout(x)
        scale = self.magnitude.to(x.dtype) / self._weight_norm(x.dtype)
        if isinstance(self.dropout, nn.Identity) or not self.training:
            # base += s * (x A^T) B^T in place (the base matmul does not keep its output)
            add_low_rank_(base, self.lora_a(dropped), self.lora_b.weight, self.scaling)
            return self._add_bias(scale * base)
        # PEFT rescales the base path seen through the dropped-out input in training.
        lora_out = self.lora_b(self.lora_a(dropped))
        base_dropped = self._base_forward(dropped)
        out = base + (scale - 1) * base_dropped + scale * self.scaling * lora_out
        return self._add_bias(out)

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """``m * (W + s B A) / ||W + s B A||`` as ``[out, in]`` in the base dtype (fp32 math)."""
        base = dequantize(self.weight, torch.float32)
        combined = base + self.scaling * (self.lora_b.weight.float() @ self.lora_a.weight.float())
        norm = torch.linalg.norm(combined, dim=1, keepdim=True)
        return (combined * (self.magnitude.float().unsqueeze(1) / norm)).to(self.weight.dtype)
