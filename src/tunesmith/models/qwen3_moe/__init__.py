"""qwen3_moe family (mixture of experts): model builders; Qwen3's tokenizer builders."""

from tunesmith.models.qwen3._tokenizer import *  # noqa: F401,F403
from tunesmith.models.qwen3_moe._model_builders import *  # noqa: F401,F403
