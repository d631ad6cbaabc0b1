"""tunesmith.generation: KV-cached decoding, sampling, and streaming text out of a decoder."""

from tunesmith.generation._generate import *  # noqa: F401,F403
from tunesmith.generation._sampling import *  # noqa: F401,F403
from tunesmith.generation._steps import *  # noqa: F401,F403
from tunesmith.generation._streaming import *  # noqa: F401,F403
