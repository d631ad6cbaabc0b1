"""tunesmith.training: checkpointers, schedulers, loggers, memory and distributed helpers.

Recipes use these as plain functions; torchtune config paths such as
``torchtune.training.lr_schedulers.get_cosine_schedule_with_warmup`` resolve here. Each module
below exports exactly its ``__all__``.
"""

import sys as _sys

from tunesmith.training.activations import *  # noqa: F401,F403
from tunesmith.training.checkpointing import *  # noqa: F401,F403
from tunesmith.training.compile import *  # noqa: F401,F403
from tunesmith.training.distributed import *  # noqa: F401,F403
from tunesmith.training.gradients import *  # noqa: F401,F403
from tunesmith.training.lr_schedulers import *  # noqa: F401,F403
from tunesmith.training.memory import *  # noqa: F401,F403
from tunesmith.training.metric_logging import *  # noqa: F401,F403
from tunesmith.training.model_util import *  # noqa: F401,F403
from tunesmith.training.optim_in_bwd import *  # noqa: F401,F403
from tunesmith.training.optimizers import *  # noqa: F401,F403
from tunesmith.training.plot import *  # noqa: F401,F403
from tunesmith.training.precision import *  # noqa: F401,F403
from tunesmith.training.profiler import *  # noqa: F401,F403
from tunesmith.training.progress import *  # noqa: F401,F403
from tunesmith.training.seed import *  # noqa: F401,F403

# `from tunesmith.training import *` gives the functions and classes, never the submodule names
# (a star import must not shadow the builtin `compile`).
__all__ = sorted(
    {
        name
        for _module in (
            "checkpointing",
            "activations",
            "compile",
            "distributed",
            "gradients",
            "lr_schedulers",
            "memory",
            "metric_logging",
            "model_util",
            "optim_in_bwd",
            "optimizers",
            "plot",
            "precision",
            "profiler",
            "progress",
            "seed",
        )
        for name in _sys.modules[f"{__name__}.{_module}"].__all__
    }
)
