"""qwen2 family: public model builders (torchtune names) and tokenizer builders."""

from tunesmith.models._generic import lora_qwen2, qwen2  # noqa: F401  (torchtune's generic builders)
from tunesmith.models.layer_builders import (  # noqa: F401
    lora_qwen2_mlp,
    lora_qwen2_self_attention,
    qwen2_mlp,
)
from tunesmith.models.qwen2._model_builders import *  # noqa: F401,F403
from tunesmith.models.qwen2._tokenizer import *  # noqa: F401,F403
from tunesmith.modules.position_embeddings import Qwen2RotaryPositionalEmbeddings  # noqa: F401
