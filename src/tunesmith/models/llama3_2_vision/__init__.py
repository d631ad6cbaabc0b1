"""llama3_2_vision family: Llama 3.2 Vision 11B / 90B builders (torchtune names)."""

from tunesmith.models.llama3_2_vision._model_builders import *  # noqa: F401,F403
from tunesmith.models.llama3_2_vision._model_builders import __all__ as _builders

__all__ = list(_builders)
