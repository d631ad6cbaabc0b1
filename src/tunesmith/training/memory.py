"""Memory statistics: accelerator peaks (CUDA/XPU/MPS) or, on CPU, the process's peak RSS.

Definition (the same as torchtune's ``get_memory_stats``): a peak is the highest value since
the last reset. The finetune recipe resets after model/optimizer setup and after each read at
a log step, so every logged ``peak_memory_*`` is the peak of that log interval, comparable
with torchtune's per-interval figures. On CPU the peak is the resident set's high-water mark
(``VmHWM``), which Linux lets a process reset (``/proc/self/clear_refs``); where it cannot be
reset (other systems, restricted containers) ``peak_memory_rss`` stays a lifetime peak.
"""

from __future__ import annotations

import gc
import logging
import sys

import torch

__all__ = [
    "cleanup_before_training",
    "get_memory_stats",
    "log_memory_stats",
    "reset_peak_memory_stats",
]

log = logging.getLogger(__name__)

_GIB = 1024**3


def _hwm_bytes() -> int | None:
    """Linux: ``VmHWM`` (peak RSS since the last ``clear_refs`` reset), else None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _peak_rss_bytes() -> int:
    hwm = _hwm_bytes()
    if hwm is not None:
        return hwm
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # Linux reports KiB, macOS bytes.
        return int(peak if sys.platform == "darwin" else peak * 1024)
    except ImportError:  # Windows
        import psutil

        info = psutil.Process().memory_info()
        return int(getattr(info, "peak_wset", info.rss))


def _reset_peak_rss() -> bool:
    try:  # "5" resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _hwm_bytes() is not None
    except OSError:
        return False


def reset_peak_memory_stats(device: torch.device | str) -> bool:
    """Start a new peak interval on ``device``; False where its peak cannot be reset (MPS;
    CPU outside Linux), so the next peak is the lifetime one.

    Accelerators: ``torch.<type>.reset_peak_memory_stats`` (CUDA, XPU, and any backend that
    follows their API). CPU: the process's RSS high-water mark.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return _reset_peak_rss()
    backend = getattr(torch, device.type, None)
    reset = getattr(backend, "reset_peak_memory_stats", None)
    if reset is None:
        return False
    reset(device)
    return True


def get_memory_stats(device: torch.device | str, reset_stats: bool = True) -> dict[str, float]:
    """Peak memory in GiB since the last reset; with ``reset_stats`` a new interval starts.

    CUDA: ``peak_memory_active``, ``peak_memory_alloc``, ``peak_memory_reserved`` (torchtune's
    keys). XPU: the same keys. MPS: ``peak_memory_alloc`` (currently allocated by the
    driver; no peak). CPU: ``peak_memory_rss``, the peak resident set size since the last
    reset (Linux; elsewhere the lifetime peak), and ``memory_rss``, the current one.
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
    out = {"peak_memory_rss": max(_peak_rss_bytes(), rss) / _GIB, "memory_rss": rss / _GIB}
    if reset_stats:
        _reset_peak_rss()
    return out


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
    _reset_peak_rss()
