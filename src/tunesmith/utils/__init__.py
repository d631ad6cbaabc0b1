"""tunesmith.utils: logging, device and dtype, seeding, optional imports, atomic file writes.

Importing this package does not import torch; the functions that need it import it.
"""

from tunesmith.utils._atomic import (
    atomic_copy,
    atomic_save_safetensors,
    atomic_torch_save,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_path,
    fsync_dir,
)
from tunesmith.utils._device import (
    describe_runtime,
    format_runtime,
    get_device,
    get_dtype,
    log_runtime,
)
from tunesmith.utils._device_support import (
    DeviceSupport,
    batch_to_device,
    get_device_support,
    get_torch_device_namespace,
    torch_version_ge,
)
from tunesmith.utils._imports import require
from tunesmith.utils._logging import (
    LOG_FORMAT,
    configure_logging,
    get_logger,
    log_rank_zero,
    write_clear_of_progress_bars,
)
from tunesmith.utils._run_log import attach_run_log, start_run_log, stop_run_log
from tunesmith.utils._seed import set_seed

__all__ = [
    "DeviceSupport",
    "batch_to_device",
    "get_device_support",
    "get_torch_device_namespace",
    "log_rank_zero",
    "torch_version_ge",
    "LOG_FORMAT",
    "atomic_copy",
    "attach_run_log",
    "atomic_save_safetensors",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_path",
    "configure_logging",
    "describe_runtime",
    "format_runtime",
    "fsync_dir",
    "get_device",
    "get_dtype",
    "get_logger",
    "log_runtime",
    "require",
    "set_seed",
    "start_run_log",
    "stop_run_log",
    "write_clear_of_progress_bars",
]
