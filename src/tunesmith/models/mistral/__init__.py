"""mistral family: public model builders (torchtune names) and tokenizer builders."""

from tunesmith.models._classifiers import lora_mistral_classifier, mistral_classifier  # noqa: F401
from tunesmith.models._generic import lora_mistral, mistral  # noqa: F401  (torchtune's generic builders)
from tunesmith.models.layer_builders import (  # noqa: F401
    lora_mistral_mlp,
    lora_mistral_self_attention,
    mistral_mlp,
)
from tunesmith.models.mistral._model_builders import *  # noqa: F401,F403
from tunesmith.models.mistral._tokenizer import *  # noqa: F401,F403
