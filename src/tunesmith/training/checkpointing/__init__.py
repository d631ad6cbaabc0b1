"""tunesmith.training.checkpointing: checkpointers (HF, Meta, torchtune-native, GGUF, DCP),
recipe state for exact resume, crash-safe writes and graceful shutdown.

What a recipe calls is listed in docs/architecture.md (Layer 4) and in the module
docstring of ``_base.py`` (the state-dict keys of ``save_checkpoint``).
"""

from tunesmith.training.checkpointing._atomic import *  # noqa: F401,F403
from tunesmith.training.checkpointing._atomic import __all__ as _atomic_all
from tunesmith.training.checkpointing._base import *  # noqa: F401,F403
from tunesmith.training.checkpointing._base import __all__ as _base_all
from tunesmith.training.checkpointing._distributed import *  # noqa: F401,F403
from tunesmith.training.checkpointing._distributed import __all__ as _distributed_all
from tunesmith.training.checkpointing._files import *  # noqa: F401,F403
from tunesmith.training.checkpointing._files import __all__ as _files_all
from tunesmith.training.checkpointing._gguf import *  # noqa: F401,F403
from tunesmith.training.checkpointing._gguf import __all__ as _gguf_all
from tunesmith.training.checkpointing._hf import *  # noqa: F401,F403
from tunesmith.training.checkpointing._hf import __all__ as _hf_all
from tunesmith.training.checkpointing._meta import *  # noqa: F401,F403
from tunesmith.training.checkpointing._meta import __all__ as _meta_all
from tunesmith.training.checkpointing._recipe_state import *  # noqa: F401,F403
from tunesmith.training.checkpointing._recipe_state import __all__ as _recipe_all
from tunesmith.training.checkpointing._signals import *  # noqa: F401,F403
from tunesmith.training.checkpointing._signals import __all__ as _signals_all

__all__ = [
    *_atomic_all,
    *_base_all,
    *_distributed_all,
    *_files_all,
    *_gguf_all,
    *_hf_all,
    *_meta_all,
    *_recipe_all,
    *_signals_all,
]
