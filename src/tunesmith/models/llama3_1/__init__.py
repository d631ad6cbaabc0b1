"""llama3_1 family: public model builders (torchtune names) and tokenizer builders."""

from tunesmith.models._generic import llama3_1, lora_llama3_1  # noqa: F401  (torchtune's generic builders)
from tunesmith.models.layer_builders import llama3_mlp, lora_llama3_mlp  # noqa: F401
from tunesmith.models.llama3_1._model_builders import *  # noqa: F401,F403
from tunesmith.models.llama3_1._tokenizer import *  # noqa: F401,F403
from tunesmith.modules.position_embeddings import Llama3ScaledRoPE  # noqa: F401
