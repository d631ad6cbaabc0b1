"""torchdata's resumable data loading (``torchdata.stateful_dataloader``) for torchtune recipe files.

torchtune 0.6.1's recipes build ``StatefulDataLoader(ds, sampler=StatefulDistributedSampler(...))``
and save ``loader.state_dict()`` with their checkpoints. When torchdata is not installed, the
compatibility import (:mod:`tunesmith.compat`) serves ``torchdata.stateful_dataloader`` and
``torchdata.stateful_dataloader.sampler`` from this module; an installed torchdata is always
used instead.

* :class:`StatefulDistributedSampler` is tunesmith's (:mod:`tunesmith.data`): the same
  per-rank split of the same ``seed + epoch`` permutation as torchdata's, so a recipe sees the
  same samples in the same order.
* :class:`StatefulDataLoader` is a ``torch.utils.data.DataLoader`` whose ``state_dict()``
  records how many batches this epoch's iterator has handed out and the sampler's position;
  ``load_state_dict()`` makes the next iteration continue after them. The state dict is
  tunesmith's layout, not torchdata's (a checkpoint written under one does not resume under
  the other).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

from tunesmith.data import StatefulDistributedSampler

__all__ = ["StatefulDataLoader", "StatefulDistributedSampler"]


class StatefulDataLoader(DataLoader):
    """A ``DataLoader`` that can save and restore its position within an epoch.

    Takes ``DataLoader``'s arguments. Exact resume needs a sampler with ``state_dict`` /
    ``load_state_dict`` (:class:`StatefulDistributedSampler`); with another sampler the state
    holds the batch count only and loading it is refused.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batches_yielded = 0
        self._resumed: tuple[Any, int] | None = None  # (sampler epoch, batches) to continue

    def __iter__(self) -> Iterator[Any]:
        self._batches_yielded = 0
        if self._resumed is not None:  # counts only in the epoch it was saved in
            epoch, batches = self._resumed
            if getattr(self._position_source(), "epoch", epoch) == epoch:
                self._batches_yielded = batches
            self._resumed = None
        for batch in super().__iter__():
            self._batches_yielded += 1
            yield batch

    def _position_source(self) -> Any:
        """The object that knows the position: the sampler, or a user's batch sampler."""
        return self.sampler if self.batch_size is not None else self.batch_sampler

    def state_dict(self) -> dict[str, Any]:
        """``{"batches_yielded": n, "sampler": the sampler's state after those batches}``."""
        state: dict[str, Any] = {"batches_yielded": self._batches_yielded}
        source = self._position_source()
        if hasattr(source, "state_dict"):
            if self.batch_size is not None:  # workers may have drawn ahead: count batches
                state["sampler"] = source.state_dict(
                    num_consumed=self._batches_yielded * self.batch_size
                )
            else:
                state["sampler"] = source.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue after the batches ``state_dict`` counted, on the next iteration.

        Raises:
            ValueError: when the state holds no sampler position or this loader's sampler
                cannot restore one.
        """
        source = self._position_source()
        if "sampler" not in state_dict or not hasattr(source, "load_state_dict"):
            raise ValueError(
                "StatefulDataLoader.load_state_dict: resuming needs a state saved by this "
                "loader with a StatefulDistributedSampler (no sampler position found)"
            )
        source.load_state_dict(state_dict["sampler"])
        epoch = getattr(source, "epoch", None)
        self._resumed = (epoch, int(state_dict.get("batches_yielded", 0)))
