"""NF4 helpers for QLoRA: quantize a frozen base weight with torchao and keep checkpoints plain.

torchao is imported lazily (it is slow to import and only QLoRA needs it). torchao moved the
NF4 tensor from ``torchao.dtypes.nf4tensor`` to ``torchao.quantization`` in later releases; both
locations are tried.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

_NF4_API: tuple[type, Any, Any] | None = None
# Where state_dict() puts dequantized NF4 weights (None: where the NF4 weight lives).
_STATE_DICT_DEVICE: torch.device | None = None


def _nf4_api() -> tuple[type, Any, Any]:
    """Return ``(NF4Tensor, to_nf4, linear_nf4)`` from whichever torchao layout is installed.

    Memoised in a module global (not ``functools.cache``, which torch.compile warns about).
    """
    global _NF4_API
    if _NF4_API is not None:
        return _NF4_API
    try:
        from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import (
            NF4Tensor,
            linear_nf4,
            to_nf4,
        )
    except ImportError:
        try:
            from torchao.dtypes.nf4tensor import NF4Tensor, linear_nf4, to_nf4
        except ImportError as err:  # pragma: no cover - torchao is a core dependency
            raise ImportError(
                "quantize_base=True (QLoRA) needs torchao's NF4 tensor: pip install 'torchao>=0.10'"
            ) from err
    _NF4_API = (NF4Tensor, to_nf4, linear_nf4)
    return _NF4_API


def is_nf4(tensor: torch.Tensor | None) -> bool:
    """True when ``tensor`` is a torchao NF4Tensor (checked without importing torchao)."""
    return tensor is not None and type(tensor).__name__ == "NF4Tensor"


def quantize_nf4(weight: torch.Tensor, block_size: int = 64) -> torch.Tensor:
    """Quantize a 2-D weight ``[out, in]`` to NF4 as QLoRA does.

    Blocks of 64 values share a scale; scales are double-quantized in groups of 256 (torchao's
    defaults). Small weights whose block count is not a multiple of 256 use the largest power
    of two dividing it, so tiny test models quantize too; real model dims are unaffected.
    """
    _, to_nf4, _ = _nf4_api()
    numel = weight.numel()
    if numel % block_size != 0:
        raise ValueError(
            f"quantize_base=True needs a weight whose element count is a multiple of 64 "
            f"(NF4 block size); got shape {tuple(weight.shape)}. Disable quantize_base for this "
            "layer or use dims that are multiples of 64."
        )
    scaler_block_size = math.gcd(numel // block_size, 256)
    return to_nf4(weight.detach().contiguous(), block_size, scaler_block_size)


def nf4_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x [..., in] @ weight[out, in].T`` for an NF4 weight; gradient flows to ``x`` only."""
    _, _, linear_nf4 = _nf4_api()
    return linear_nf4(input=x, weight=weight)


def dequantize(
    weight: torch.Tensor,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Plain tensor of ``weight`` (dequantized when NF4) in ``dtype`` (default: its own dtype),
    on ``device`` (default: its own device)."""
    if is_nf4(weight):
        plain = weight.get_original_weight().to(dtype or weight.dtype)
        return plain if device is None else plain.to(device)
    return weight.to(device=device, dtype=dtype)


@contextlib.contextmanager
def dequantized_state_dict_on(device: torch.device | str) -> Iterator[None]:
    """While active, ``state_dict()`` moves each dequantized NF4 weight to ``device`` as soon
    as it is made, so a GPU holds at most one dequantized base weight at a time (instead of
    the whole dequantized base until the caller copies the dict to CPU)."""
    global _STATE_DICT_DEVICE
    previous, _STATE_DICT_DEVICE = _STATE_DICT_DEVICE, torch.device(device)
    try:
        yield
    finally:
        _STATE_DICT_DEVICE = previous


def dequantize_state_dict_post_hook(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    """``state_dict`` post hook: replace NF4 entries with plain tensors in their original dtype
    (on the device set by :func:`dequantized_state_dict_on`, if any).

    Checkpoints then hold ordinary tensors that load into a quantized or unquantized model
    alike (loading a plain tensor into an NF4 parameter re-quantizes it via ``copy_``).
    """
    key = prefix + "weight"
    value = state_dict.get(key)
    if is_nf4(value):
        state_dict[key] = dequantize(value, device=_STATE_DICT_DEVICE)
