"""Seed every random number generator a run touches."""

from __future__ import annotations

import os
import random

from tunesmith.config._errors import ConfigError

__all__ = ["set_seed"]

_MAX_SEED = 2**32 - 1


def set_seed(seed: int | None = None, debug_mode: str | int | None = None) -> int:
    """Seed Python's ``random``, NumPy and torch (all devices) and return the seed used.

    ``None`` draws a fresh seed; under ``torch.distributed`` rank 0's draw is shared so every
    rank uses the same seed.

    ``debug_mode`` (torchtune's ``cudnn_deterministic_mode``) sets
    ``torch.set_deterministic_debug_mode``: ``None`` leaves PyTorch's settings alone;
    ``"default"`` / 0 allows nondeterministic kernels and turns cuDNN benchmarking on;
    ``"warn"`` / 1 and ``"error"`` / 2 warn on (or refuse) nondeterministic kernels, make cuDNN
    deterministic and set ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` for deterministic cuBLAS.

    Raises:
        ConfigError (a ValueError): naming ``seed`` when it is not an int in ``[0, 2**32 - 1]``.
    """
    import numpy as np
    import torch

    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little")
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            shared = [seed]
            torch.distributed.broadcast_object_list(shared, src=0)
            seed = int(shared[0])
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _MAX_SEED:
        raise ConfigError(
            f"Invalid seed value provided: seed={seed!r} is not an int between 0 and {_MAX_SEED}; "
            "set seed=<int> or seed=null"
        )
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if debug_mode is not None:
        _set_debug_mode(debug_mode)
    return seed


def _set_debug_mode(debug_mode: str | int) -> None:
    import torch

    try:
        torch.set_deterministic_debug_mode(debug_mode)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(
            f"cudnn_deterministic_mode: {debug_mode!r} is not a debug mode ({e}); use default, "
            "warn or error (0, 1, 2) or null"
        ) from None
    deterministic = torch.get_deterministic_debug_mode() != 0
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
