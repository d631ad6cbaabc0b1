"""qwen2_5 family: public model builders (torchtune names) and tokenizer builders."""

from tunesmith.models.qwen2_5._model_builders import *  # noqa: F401,F403
from tunesmith.models.qwen2_5._tokenizer import *  # noqa: F401,F403
