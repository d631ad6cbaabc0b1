"""torchtune-private names that torchtune 0.6.1's own code and tests import, with the values
they take on tunesmith (the compatibility table points the torchtune names here)."""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from typing import Any


def _torchao_at_least(major: int, minor: int) -> bool:
    try:
        parts = version("torchao").split("+")[0].split(".")
    except PackageNotFoundError:
        return False
    return (int(parts[0]), int(parts[1])) >= (major, minor)


_torchao_0_7_supported = _torchao_at_least(0, 7)
"""``torchtune.training.quantization._torchao_0_7_supported``: torchao >= 0.7 installed."""


def _get_device_type_from_env() -> str:
    """``torchtune.utils._device._get_device_type_from_env``: cuda, npu, xpu or cpu."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    npu = getattr(torch, "npu", None)
    if npu is not None and npu.is_available():
        return "npu"
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return "xpu"
    return "cpu"


def _setup_device(device: Any) -> Any:
    """``torchtune.utils._device._setup_device``: an accelerator device gets this process's
    ``LOCAL_RANK`` as index and becomes the current device; cpu is returned unchanged.

    Raises:
        RuntimeError: the local rank is beyond the devices this machine has.
    """
    import torch

    if device.type == "cpu":
        return device
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = getattr(torch, device.type)
    if rank >= backend.device_count():
        raise RuntimeError(
            f"Device index {rank} (LOCAL_RANK) is out of range for {backend.device_count()} "
            f"{device.type} device(s) on this machine."
        )
    device = torch.device(device.type, rank)
    backend.set_device(device)
    return device


def _set_float32_precision(precision: str = "high") -> None:
    """``torchtune.training.precision._set_float32_precision``: on CUDA, the fp32 matmul
    precision (``"highest"`` also turns cuDNN TF32 off); nothing elsewhere."""
    import torch

    if not torch.cuda.is_available():
        return
    torch.set_float32_matmul_precision(precision)
    torch.backends.cudnn.allow_tf32 = precision != "highest"
