"""mistral family: public model builders (torchtune names) and tokenizer builders."""

from tunesmith.models.mistral._model_builders import *  # noqa: F401,F403
from tunesmith.models.mistral._tokenizer import *  # noqa: F401,F403
