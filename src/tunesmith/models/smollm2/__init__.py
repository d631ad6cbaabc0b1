"""smollm2 family: public model builders (torchtune names) and tokenizer builders."""

from tunesmith.models.smollm2._model_builders import *  # noqa: F401,F403
from tunesmith.models.smollm2._tokenizer import *  # noqa: F401,F403
