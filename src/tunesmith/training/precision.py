"""Precision helpers: dtype names from configs, a scoped default dtype, dtype checks."""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterable

import torch
from torch import nn

__all__ = [
    "PRECISION_STR_TO_DTYPE",
    "get_dtype",
    "set_default_dtype",
    "validate_expected_param_dtype",
    "verify_bf16_support",
]

PRECISION_STR_TO_DTYPE: dict[str, torch.dtype] = {
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
    "fp64": torch.float64,
    "float64": torch.float64,
    "double": torch.float64,
}


def verify_bf16_support(device: torch.device | None = None) -> bool:
    """Whether bf16 math is supported on ``device`` (CPU, MPS and XPU always; CUDA by capability)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return True


def get_dtype(
    dtype: str | torch.dtype | None = None, device: torch.device | str | None = None
) -> torch.dtype:
    """Turn a config's ``dtype`` (``fp32``, ``bf16``, ``fp16``, ``float32``, a ``torch.dtype``)
    into a ``torch.dtype``; ``None`` means fp32.

    Raises:
        ValueError: the name is unknown (the message lists the accepted names), or bf16 was asked
            for on a CUDA device that cannot do it.
    """
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    else:
        key = str(dtype).strip().lower().removeprefix("torch.")
        if key not in PRECISION_STR_TO_DTYPE:
            raise ValueError(
                f"dtype: unknown precision {dtype!r}; use one of "
                f"{sorted(set(PRECISION_STR_TO_DTYPE))} (e.g. dtype=bf16)."
            )
        resolved = PRECISION_STR_TO_DTYPE[key]
    if resolved == torch.bfloat16 and device is not None:
        if not verify_bf16_support(torch.device(device)):
            raise ValueError(
                f"dtype: bf16 is not supported on {device}; set dtype=fp32 (or fp16 with care)."
            )
    return resolved


@contextlib.contextmanager
def set_default_dtype(dtype: torch.dtype) -> Generator[None, None, None]:
    """Within the block, new floating-point tensors and parameters default to ``dtype``.

    Building a model under ``set_default_dtype(torch.bfloat16)`` allocates it directly in bf16
    instead of fp32 then casting, halving peak memory at construction.
    """
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def validate_expected_param_dtype(
    named_params: Iterable[tuple[str, torch.Tensor]] | nn.Module, dtype: torch.dtype
) -> None:
    """Raise ``ValueError`` naming the first floating-point parameter whose dtype is not ``dtype``.

    Quantized (NF4 / int) parameters are skipped: they are meant to differ.
    """
    if isinstance(named_params, nn.Module):
        named_params = named_params.named_parameters()
    for name, param in named_params:
        if not torch.is_floating_point(param) or type(param.data).__name__ == "NF4Tensor":
            continue
        if param.dtype != dtype:
            raise ValueError(
                f"parameter {name!r} has dtype {param.dtype}, expected {dtype}: build the model "
                f"under set_default_dtype({dtype}) or cast it with model.to({dtype})."
            )
