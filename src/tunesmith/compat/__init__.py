"""tunesmith.compat: ``import torchtune`` served by tunesmith, for code written against torchtune.

``install()`` puts a finder on ``sys.meta_path`` that answers ``torchtune`` and every
``torchtune.X`` import from tunesmith, with the same name mapping that config
``_component_`` paths use (:data:`tunesmith.config.TORCHTUNE_ALIASES`, one table for both):

* a torchtune module whose tunesmith counterpart exists **is** that module
  (``torchtune.data is tunesmith.data``; ``torchtune.utils.metric_logging`` is
  ``tunesmith.training.metric_logging``);
* a torchtune module that maps to several tunesmith modules, or that names objects the table
  sends elsewhere (``torchtune.rlhf.loss.PPOLoss``), is a read-only view that looks names up
  in each of them in order;
* a torchtune submodule with no tunesmith module of its own (torchtune's private files such
  as ``torchtune.modules.peft.lora`` or ``torchtune.data._messages``) is a view of its nearest
  mapped ancestor, so ``from torchtune.data._messages import Message`` finds
  ``tunesmith.data.Message``.

Besides ``torchtune.*`` the finder answers only the table's third-party names, each where the
installed packages lack them: two torchao modules later torchao releases moved, and
``torchdata.stateful_dataloader`` (:mod:`tunesmith.compat.torchdata`, which torchtune's recipe
files import) where torchdata is not installed at all.

Nothing is installed on import, and :func:`install` refuses (returns False) when a real
``torchtune`` is importable: a real install is never shadowed. ``tunesmith run my_recipe.py``
and ``_component_`` modules that import torchtune turn it on by themselves (see
:func:`install_if_needed`).
"""

from tunesmith.compat._finder import (
    TorchtuneFinder,
    install,
    install_if_needed,
    installed,
    real_torchtune_available,
    tunesmith_modules_for,
    uninstall,
)

__all__ = [
    "TorchtuneFinder",
    "install",
    "install_if_needed",
    "installed",
    "real_torchtune_available",
    "tunesmith_modules_for",
    "uninstall",
]
