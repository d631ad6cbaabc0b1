"""gpt_oss family (mixture of experts, attention sinks): model builders (no tokenizer yet)."""

from tunesmith.models.gpt_oss._model_builders import *  # noqa: F401,F403
