"""qwen2_5_vl family: Qwen2.5-VL 3B / 7B / 32B / 72B builders and the image transform."""

from tunesmith.models.qwen2_5_vl._model_builders import *  # noqa: F401,F403
from tunesmith.models.qwen2_5_vl._model_builders import __all__ as _builders

__all__ = list(_builders)
