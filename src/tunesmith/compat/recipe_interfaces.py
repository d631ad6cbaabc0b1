"""torchtune's recipe interfaces (``torchtune.recipe_interfaces``): the methods a recipe class has.

They are ``typing.Protocol`` classes, as in torchtune: a recipe class may inherit from them to
document its shape, and nothing checks it at run time.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["EvalRecipeInterface", "FTRecipeInterface"]


class FTRecipeInterface(Protocol):
    """A finetuning recipe: ``load_checkpoint``, ``setup``, ``train``, ``save_checkpoint``,
    ``cleanup``, called in that order by its ``recipe_main``."""

    def load_checkpoint(self, **kwargs: Any) -> None:
        """Read the checkpoint the run starts from (weights, and recipe state on resume)."""
        ...

    def setup(self, **kwargs: Any) -> None:
        """Build the model, tokenizer, loss, optimizer, data and schedule."""
        ...

    def train(self, **kwargs: Any) -> None:
        """The training loop."""
        ...

    def save_checkpoint(self, **kwargs: Any) -> None:
        """Write the weights (and recipe state for a resume)."""
        ...

    def cleanup(self, **kwargs: Any) -> None:
        """Release loggers, process groups and other resources."""
        ...


class EvalRecipeInterface(Protocol):
    """An evaluation recipe: ``load_checkpoint``, ``setup``, ``evaluate``."""

    def load_checkpoint(self, **kwargs: Any) -> None:
        """Read the checkpoint to evaluate."""
        ...

    def setup(self, **kwargs: Any) -> None:
        """Build the model and the tasks."""
        ...

    def evaluate(self, **kwargs: Any) -> None:
        """Run the evaluation."""
        ...
