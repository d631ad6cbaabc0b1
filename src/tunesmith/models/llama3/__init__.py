"""llama3 family: public model builders (torchtune names) and tokenizer builders."""

from tunesmith.models._generic import llama3, lora_llama3  # noqa: F401  (torchtune's generic builders)
from tunesmith.models.layer_builders import (  # noqa: F401
    llama3_mlp,
    lora_llama3_mlp,
    lora_llama3_self_attention,
)
from tunesmith.models.llama3._model_builders import *  # noqa: F401,F403
from tunesmith.models.llama3._tokenizer import *  # noqa: F401,F403
