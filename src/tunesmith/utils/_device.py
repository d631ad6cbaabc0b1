"""Device and dtype from config strings; torch is imported only when these are called."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from tunesmith.config._errors import ConfigError

__all__ = ["describe_runtime", "format_runtime", "get_device", "get_dtype", "log_runtime"]

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


def get_device(device: str | None = None) -> torch.device:
    """The device to run on: ``None`` picks cuda (this process's ``LOCAL_RANK``), then mps, then cpu.

    ``device`` is torchtune's argument name (``utils.get_device(device=cfg.device)``).

    ``"cuda"`` also becomes ``cuda:<LOCAL_RANK>`` and is made the current CUDA device.

    Raises:
        ConfigError (a ValueError): naming ``device`` for an unknown or unavailable device.
    """
    import torch

    name = device
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
        raise ConfigError(
            "dtype: bf16 is not supported on this GPU; use dtype=fp32, or a bf16-capable GPU "
            "(Ampere or newer); dtype=fp16 also trains, with dynamic loss scaling"
        )
    return dtype


def _driver_version() -> str | None:
    """The NVIDIA driver version: NVML (``nvidia-ml-py``) if importable, else ``nvidia-smi``."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            v = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return v.decode() if isinstance(v, bytes) else str(v)
    except Exception:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_runtime(device: Any = None) -> dict[str, Any]:
    """What this process runs on: device, torch build, CUDA / cuDNN / driver versions.

    ``device`` (a ``torch.device`` or string; default: the current CUDA device if any, else
    cpu) picks which GPU is described. Keys: ``device``, ``device_name``, ``capability``
    (``"9.0"``), ``memory_gib``, ``torch``, ``cuda`` (the CUDA torch was built with),
    ``hip``, ``cudnn``, ``driver``, ``gpus`` (visible), ``python``, ``cpu_threads``; a key
    that does not apply is ``None``. Cheap: no CUDA context is created on a CPU device, and
    the driver is read through NVML or one ``nvidia-smi`` call.
    """
    import torch

    if device is None:
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    gpu = device.type == "cuda" and torch.cuda.is_available()
    info: dict[str, Any] = {
        "device": str(device),
        "device_name": _cpu_name(),
        "capability": None,
        "memory_gib": None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "hip": getattr(torch.version, "hip", None),
        "cudnn": None,
        "driver": None,
        "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
    }
    if gpu:
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info["device"] = f"cuda:{index}"
        info["device_name"] = props.name
        info["capability"] = f"{props.major}.{props.minor}"
        info["memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cudnn"] = (
            torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        )
        info["driver"] = _driver_version() if info["hip"] is None else None
    elif device.type == "mps":
        info["device_name"] = "Apple MPS"
    return info


def format_runtime(info: dict[str, Any]) -> str:
    """One line: ``cuda:0 NVIDIA H200 (sm 9.0, 139.8 GiB) | torch 2.11.0+cu130, CUDA 13.0 ...``."""
    where = f"{info['device']} {info['device_name']}".strip()
    if info.get("capability"):
        where += f" (sm {info['capability']}, {info['memory_gib']} GiB, {info['gpus']} visible)"
    build = f"torch {info['torch']}"
    if info.get("hip"):
        build += f", HIP {info['hip']}"
    else:
        build += f", CUDA {info.get('cuda') or '-'}"
    if info.get("capability"):
        build += f", cuDNN {info.get('cudnn') or '-'}, driver {info.get('driver') or '-'}"
    return f"{where} | {build} | Python {info['python']}, {info['cpu_threads']} CPU threads"


_DESCRIBED: dict[str, dict[str, Any]] = {}


def log_runtime(device: Any = None, rank: int = 0) -> dict[str, Any] | None:
    """Log :func:`format_runtime` at the start of each run (rank 0 only); returns the dict.

    Every run logs the line, so each run's ``run.log`` holds it even when several recipes
    run in one process; the probe itself (drivers, ``nvidia-smi``) runs once per device.
    """
    from tunesmith.utils._logging import get_logger

    if rank != 0:
        return None
    key = str(device)
    if key not in _DESCRIBED:
        _DESCRIBED[key] = describe_runtime(device)
    info = _DESCRIBED[key]
    get_logger("tunesmith.runtime").info("runtime: %s", format_runtime(info))
    return info
