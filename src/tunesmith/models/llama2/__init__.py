"""llama2 family: public model builders (torchtune names) and tokenizer builders."""

from tunesmith.models._classifiers import llama2_classifier, lora_llama2_classifier  # noqa: F401
from tunesmith.models._generic import lora_llama2  # noqa: F401  (torchtune's generic builders)
from tunesmith.models.layer_builders import lora_llama2_mlp, lora_llama2_self_attention  # noqa: F401
from tunesmith.models.llama2._component_builders import (  # noqa: F401
    llama2,
    llama2_mlp,
    scale_hidden_dim_for_mlp,
)
from tunesmith.models.llama2._model_builders import *  # noqa: F401,F403
from tunesmith.models.llama2._tokenizer import *  # noqa: F401,F403
