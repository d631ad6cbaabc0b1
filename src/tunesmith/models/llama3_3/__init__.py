"""llama3_3 family: public model builders (torchtune names) and tokenizer builders."""

from tunesmith.models.llama3_3._model_builders import *  # noqa: F401,F403
from tunesmith.models.llama3_3._tokenizer import *  # noqa: F401,F403
