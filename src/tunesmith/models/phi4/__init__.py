"""phi4 family: public model builders (torchtune names) and tokenizer builders."""

from tunesmith.models.phi4._model_builders import *  # noqa: F401,F403
from tunesmith.models.phi4._tokenizer import *  # noqa: F401,F403
