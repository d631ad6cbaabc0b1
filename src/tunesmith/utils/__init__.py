"""tunesmith.utils: logging, device and dtype, seeding, optional imports.

Importing this package does not import torch; the functions that need it import it.
"""

from tunesmith.utils._device import get_device, get_dtype
from tunesmith.utils._imports import require
from tunesmith.utils._logging import LOG_FORMAT, configure_logging, get_logger
from tunesmith.utils._seed import set_seed

__all__ = [
    "LOG_FORMAT",
    "configure_logging",
    "get_device",
    "get_dtype",
    "get_logger",
    "require",
    "set_seed",
]
