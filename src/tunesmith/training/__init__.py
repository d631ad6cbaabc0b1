"""tunesmith.training: checkpointers, schedulers, loggers, memory and distributed helpers."""

from tunesmith.training.checkpointing import *  # noqa: F401,F403
