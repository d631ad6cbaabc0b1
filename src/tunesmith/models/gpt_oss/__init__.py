"""gpt_oss family (mixture of experts, attention sinks): model builders and the harmony
tokenizer builder."""

from tunesmith.models.gpt_oss._model_builders import *  # noqa: F401,F403
from tunesmith.models.gpt_oss._tokenizer import *  # noqa: F401,F403
