"""Seed every random number generator a run touches."""

from __future__ import annotations

import os
import random

from tunesmith.config._errors import ConfigError

__all__ = ["set_seed"]

_MAX_SEED = 2**32 - 1


def set_seed(seed: int | None = None) -> int:
    """Seed Python's ``random``, NumPy and torch (all devices) and return the seed used.

    ``None`` draws a fresh seed; under ``torch.distributed`` rank 0's draw is shared so every
    rank uses the same seed.

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
            f"seed: {seed!r} is not an int between 0 and {_MAX_SEED}; set seed=<int> or seed=null"
        )
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return seed
