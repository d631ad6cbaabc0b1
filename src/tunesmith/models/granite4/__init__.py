"""granite4 family (Granite 4.0 dense models): model builders and tokenizer builder."""

from tunesmith.models.granite4._model_builders import *  # noqa: F401,F403
from tunesmith.models.granite4._tokenizer import *  # noqa: F401,F403
