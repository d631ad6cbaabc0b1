"""Device kinds and batch moves under torchtune's ``torchtune.utils`` names."""

from __future__ import annotations

from enum import Enum
from typing import Any

__all__ = [
    "DeviceSupport",
    "batch_to_device",
    "get_device_support",
    "get_torch_device_namespace",
    "torch_version_ge",
]


class DeviceSupport(Enum):
    """A compute device kind: ``device_type``, ``device_name``, ``communication_backend``."""

    CPU = ("cpu", "CPU", "gloo")
    CUDA = ("cuda", "GPU", "nccl")
    NPU = ("npu", "NPU", "hccl")
    XPU = ("xpu", "XPU", "ccl")

    def __init__(self, device_type: str, device_name: str, communication_backend: str) -> None:
        self.device_type = device_type
        self.device_name = device_name
        self.communication_backend = communication_backend

    @staticmethod
    def from_type(device_type: str) -> DeviceSupport:
        """The member for ``"cpu"`` / ``"cuda"`` / ``"npu"`` / ``"xpu"``; ValueError otherwise."""
        for member in DeviceSupport:
            if member.device_type == device_type:
                return member
        raise ValueError(f"Unknown device type: {device_type}.")


def get_device_support() -> DeviceSupport:
    """The kind of the device :func:`tunesmith.utils.get_device` picks on this machine."""
    from tunesmith.utils._device import get_device

    return DeviceSupport.from_type(get_device().type)


def get_torch_device_namespace() -> Any:
    """``torch.cuda`` / ``torch.xpu`` / ... for this machine's device (``torch.cuda`` if none)."""
    import torch

    return getattr(torch, get_device_support().device_type, torch.cuda)


def batch_to_device(batch: dict, device: Any) -> None:
    """Move every tensor of a (nested) dict to ``device`` in place.

    Raises:
        ValueError: for a value that is neither a dict, a tensor nor a flex-attention BlockMask.
    """
    import torch

    for key, value in batch.items():
        if isinstance(value, dict):
            batch_to_device(value, device)
        elif isinstance(value, torch.Tensor) or type(value).__name__ == "BlockMask":
            batch[key] = value.to(device)
        else:
            raise ValueError(
                "To use batch_to_device, all elements in the batch must be a dict or Tensor. "
                f'Got key "{key}" with value of type {type(value)}'
            )


def torch_version_ge(version: str) -> bool:
    """Whether the installed torch is at least ``version`` (``"2.5.0"``; dev builds count)."""
    import re

    import torch

    def release(text: str) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", text.split("+")[0])[:3])

    return "dev" in torch.__version__ or release(torch.__version__) >= release(version)
