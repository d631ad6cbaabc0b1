"""qwen3_vl family: Qwen3-VL (dense) 2B / 4B / 8B / 32B builders and the image transform."""

from tunesmith.models.qwen3_vl._model_builders import *  # noqa: F401,F403
from tunesmith.models.qwen3_vl._model_builders import __all__ as _builders

__all__ = list(_builders)
