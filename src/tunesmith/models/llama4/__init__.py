"""llama4 family: Scout / Maverick (MoE text decoder + early-fusion vision encoder) builders,
the tokenizer and ``llama4_transform``."""

from tunesmith.models.llama4._model_builders import *  # noqa: F401,F403
from tunesmith.models.llama4._tokenizer import LLAMA4_SPECIAL_TOKENS, Llama4Tokenizer  # noqa: F401
