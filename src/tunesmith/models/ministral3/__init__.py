"""ministral3 family: public model builders (torchtune-style names) and tokenizer builder."""

from tunesmith.models.ministral3._model_builders import *  # noqa: F401,F403
from tunesmith.models.ministral3._tokenizer import *  # noqa: F401,F403
