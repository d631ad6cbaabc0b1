"""phi3 family: public model builders (torchtune names) and tokenizer builders."""

from tunesmith.models._generic import lora_phi3, phi3  # noqa: F401  (torchtune's generic builders)
from tunesmith.models.layer_builders import (  # noqa: F401
    lora_phi3_mlp,
    lora_phi3_self_attention,
    phi3_mlp,
)
from tunesmith.models.phi3._model_builders import *  # noqa: F401,F403
from tunesmith.models.phi3._tokenizer import *  # noqa: F401,F403
from tunesmith.modules.position_embeddings import Phi3RotaryPositionalEmbeddings  # noqa: F401
