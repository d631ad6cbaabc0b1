"""Device and dtype from config strings; torch is imported only when these are called."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from tunesmith.config._errors import ConfigError

__all__ = ["get_device", "get_dtype"]

_DTYPE_NAMES = {
    "fp32": "float32",
    "float32": "float32",
    "float": "float32",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
    "fp64": "float64",
    "float64": "float64",
}


def get_device(name: str | None = None) -> torch.device:
    """The device to run on: ``None`` picks cuda (this process's ``LOCAL_RANK``), then mps, then cpu.

    ``"cuda"`` also becomes ``cuda:<LOCAL_RANK>`` and is made the current CUDA device.

    Raises:
        ConfigError (a ValueError): naming ``device`` for an unknown or unavailable device.
    """
    import torch

    if name is None:
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(
            f"device: {name!r} is not a device ({e}); use cpu, cuda, cuda:<index> or mps"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device: {name!r} asked for CUDA but no GPU is available; set device=cpu"
            )
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device: {device} does not exist ({torch.cuda.device_count()} GPUs visible); "
                "use a smaller index"
            )
        torch.cuda.set_device(device)
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError(
                f"device: {name!r} asked for MPS, which is not available; set device=cpu"
            )
    return device


def get_dtype(name: Any = None, device: torch.device | None = None) -> torch.dtype:
    """A ``torch.dtype`` from ``fp32/bf16/fp16``, torch names (``bfloat16``, ``torch.float16``) or a dtype.

    ``None`` means float32. With a CUDA ``device``, bf16 is checked to be supported.

    Raises:
        ConfigError (a ValueError): naming ``dtype`` and the accepted names.
    """
    import torch

    if name is None:
        return torch.float32
    if isinstance(name, torch.dtype):
        dtype = name
    elif isinstance(name, str) and name.strip().lower().removeprefix("torch.") in _DTYPE_NAMES:
        dtype = getattr(torch, _DTYPE_NAMES[name.strip().lower().removeprefix("torch.")])
    else:
        raise ConfigError(
            f"dtype: {name!r} is not a supported dtype; use fp32, bf16 or fp16 "
            "(or float32, bfloat16, float16)"
        )
    if (
        dtype is torch.bfloat16
        and device is not None
        and torch.device(device).type == "cuda"
        and not torch.cuda.is_bf16_supported()
    ):
        raise ConfigError("dtype: bf16 is not supported on this GPU; use dtype=fp32 or dtype=fp16")
    return dtype
