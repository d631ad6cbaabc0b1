"""Quiet the start-up noise of third-party libraries that the user cannot act on.

torchao logs a warning for every optional CUDA kernel library it cannot load and torch warns
that torchao registers Enums with pytree; bitsandbytes, lm-eval and torch itself emit
deprecation and "future version" warnings at import. None of these is about the user's run,
so the CLI (and each torchrun rank) hides them. Everything tunesmith logs, and warnings
raised from tunesmith's own code, still show. ``--debug`` / ``TUNESMITH_DEBUG=1`` keeps all.
"""

from __future__ import annotations

import logging
import os
import warnings

__all__ = ["NOISY_LOGGERS", "NOISY_WARNING_MODULES", "quiet_third_party"]

NOISY_LOGGERS: tuple[str, ...] = (
    "torchao",  # "Failed to load .../torchao/_C_*.so" on machines without its CUDA kernels
    "torch.utils._pytree",  # "<enum ...> is an Enum subclass ... register_constant()"
    "bitsandbytes",
    "lm_eval",
    "torch.distributed.elastic.multiprocessing.redirects",  # "NOTE: Redirects ..." on macOS
)
"""Loggers shown only from ERROR up."""

NOISY_WARNING_MODULES = (
    r"(torchao|bitsandbytes|lm_eval|datasets|transformers|huggingface_hub|torch)(\.|$)"
)
"""Modules whose DeprecationWarning / FutureWarning / UserWarning at import are hidden."""


def quiet_third_party() -> None:
    """Hide the third-party noise above (no imports; safe to call more than once)."""
    if os.environ.get("TUNESMITH_DEBUG", "").strip().lower() not in ("", "0", "false", "no"):
        return
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for category in (DeprecationWarning, FutureWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=NOISY_WARNING_MODULES)
