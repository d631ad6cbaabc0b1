"""mixtral family (mixture of experts): model builders; Mistral's tokenizer builders."""

from tunesmith.models.mistral._tokenizer import *  # noqa: F401,F403
from tunesmith.models.mixtral._model_builders import *  # noqa: F401,F403
