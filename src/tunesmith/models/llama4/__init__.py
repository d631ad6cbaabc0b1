"""llama4 family (text decoder, mixture of experts): model builders."""

from tunesmith.models.llama4._model_builders import *  # noqa: F401,F403
