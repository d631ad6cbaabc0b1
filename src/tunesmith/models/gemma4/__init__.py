"""gemma4 family: public model builders (torchtune-style names) and tokenizer builders."""

from tunesmith.models.gemma4._model_builders import *  # noqa: F401,F403
from tunesmith.models.gemma4._tokenizer import *  # noqa: F401,F403
