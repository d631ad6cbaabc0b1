"""gemma3 family: public model builders (torchtune-style names)."""

from tunesmith.models.gemma3._model_builders import *  # noqa: F401,F403
