"""llama3_2 family: public model builders (torchtune names) and tokenizer builders."""

from tunesmith.models._generic import llama3_2, lora_llama3_2  # noqa: F401  (torchtune's generic builders)
from tunesmith.models.llama3_2._model_builders import *  # noqa: F401,F403
from tunesmith.models.llama3_2._tokenizer import *  # noqa: F401,F403
