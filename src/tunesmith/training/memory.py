"""Memory statistics: accelerator peaks (CUDA/XPU/MPS) or, on CPU, the process's peak RSS."""

from __future__ import annotations

import gc
import logging
import sys

import torch

__all__ = ["cleanup_before_training", "get_memory_stats", "log_memory_stats"]

log = logging.getLogger(__name__)

_GIB = 1024**3


def _peak_rss_bytes() -> int:
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # Linux reports KiB, macOS bytes.
        return int(peak if sys.platform == "darwin" else peak * 1024)
    except ImportError:  # Windows
        import psutil

        info = psutil.Process().memory_info()
        return int(getattr(info, "peak_wset", info.rss))


def get_memory_stats(device: torch.device | str, reset_stats: bool = True) -> dict[str, float]:
    """Peak memory in GiB since the last reset.

    CUDA: ``peak_memory_active``, ``peak_memory_alloc``, ``peak_memory_reserved`` (torchtune's
    keys); the peaks are reset afterwards when ``reset_stats``. XPU: the same keys. MPS:
    ``peak_memory_alloc`` (currently allocated by the driver). CPU: ``peak_memory_rss``, the
    process's peak resident set size (a lifetime peak; it cannot be reset) and
    ``memory_rss``, the current one.
    """
    device = torch.device(device)
    if device.type == "cuda":
        stats = torch.cuda.memory_stats(device)
        out = {
            "peak_memory_active": stats.get("active_bytes.all.peak", 0) / _GIB,
            "peak_memory_alloc": torch.cuda.max_memory_allocated(device) / _GIB,
            "peak_memory_reserved": torch.cuda.max_memory_reserved(device) / _GIB,
        }
        if reset_stats:
            torch.cuda.reset_peak_memory_stats(device)
        return out
    if device.type == "xpu":
        stats = torch.xpu.memory_stats(device)
        out = {
            "peak_memory_active": stats.get("active_bytes.all.peak", 0) / _GIB,
            "peak_memory_alloc": torch.xpu.max_memory_allocated(device) / _GIB,
            "peak_memory_reserved": torch.xpu.max_memory_reserved(device) / _GIB,
        }
        if reset_stats:
            torch.xpu.reset_peak_memory_stats(device)
        return out
    if device.type == "mps":
        return {"peak_memory_alloc": torch.mps.driver_allocated_memory() / _GIB}
    import psutil

    rss = psutil.Process().memory_info().rss
    # The kernel's high-water mark can lag the current RSS by a page or two.
    return {"peak_memory_rss": max(_peak_rss_bytes(), rss) / _GIB, "memory_rss": rss / _GIB}


def log_memory_stats(
    stats: dict[str, float], message: str = "Memory stats after model init:"
) -> str:
    """Log (INFO) and return a one-line summary such as ``peak_memory_alloc: 1.23 GiB``."""
    line = message + " " + ", ".join(f"{k}: {v:.2f} GiB" for k, v in stats.items())
    log.info(line)
    return line


def cleanup_before_training() -> None:
    """Collect garbage and, on CUDA, release cached blocks and reset peak statistics, so the
    peaks logged during training describe training only."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
