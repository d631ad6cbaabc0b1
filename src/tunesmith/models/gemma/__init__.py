"""gemma family: public model builders (torchtune names) and tokenizer builders."""

from tunesmith.models._generic import gemma, lora_gemma  # noqa: F401  (torchtune's generic builders)
from tunesmith.models.gemma._model_builders import *  # noqa: F401,F403
from tunesmith.models.gemma._tokenizer import *  # noqa: F401,F403
