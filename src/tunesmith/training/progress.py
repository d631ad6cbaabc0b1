"""A live training progress bar: step, loss, lr, tokens/s and ETA (tqdm; rank 0 only)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

import torch
from tqdm import tqdm

__all__ = ["TrainingProgress"]


def _rank() -> int:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


class TrainingProgress:
    """Progress over optimizer steps.

    ``update(loss=..., lr=..., num_tokens=...)`` once per optimizer step advances the bar and
    shows ``loss``, ``lr`` and tokens/s (tokens of the whole step, all ranks, divided by the
    step's wall time; a running average over the last ``window`` steps); tqdm shows the ETA from
    ``total``. ``tokens_per_second`` is also returned for the metric loggers.

    Args:
        total: number of optimizer steps in the run (or epoch).
        initial: steps already done (on resume).
        desc: text before the bar, e.g. ``"epoch 1"``.
        disable: hide the bar (default: hidden on ranks other than 0).
        file: stream (default stderr).
    """

    def __init__(
        self,
        total: int | None,
        initial: int = 0,
        desc: str = "train",
        disable: bool | None = None,
        file: TextIO | None = None,
        window: int = 10,
    ) -> None:
        if disable is None:
            disable = _rank() != 0
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit="step",
            dynamic_ncols=True,
            disable=disable,
            file=file or sys.stderr,
        )
        self.step = initial
        self.window = max(1, window)
        self._times: list[float] = [time.perf_counter()]
        self._tokens: list[int] = []

    def update(
        self,
        loss: float | torch.Tensor | None = None,
        lr: float | None = None,
        num_tokens: int | torch.Tensor | None = None,
        **extra: Any,
    ) -> float | None:
        """Advance one optimizer step; returns tokens/s (None when ``num_tokens`` not given)."""
        now = time.perf_counter()
        self.step += 1
        self._times.append(now)
        tps = None
        if num_tokens is not None:
            self._tokens.append(int(num_tokens))
            self._tokens = self._tokens[-self.window :]
            self._times = self._times[-(len(self._tokens) + 1) :]
            elapsed = self._times[-1] - self._times[0]
            tps = sum(self._tokens) / elapsed if elapsed > 0 else None
        else:
            self._times = self._times[-(self.window + 1) :]
        postfix: dict[str, str] = {}
        if loss is not None:
            postfix["loss"] = f"{float(loss):.4f}"
        if lr is not None:
            postfix["lr"] = f"{float(lr):.3g}"
        if tps is not None:
            postfix["tok/s"] = f"{tps:,.0f}"
        for key, value in extra.items():
            postfix[key] = f"{value:.4g}" if isinstance(value, float) else str(value)
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)
        return tps

    def write(self, message: str) -> None:
        """Print a line above the bar without breaking it."""
        self.bar.write(message)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> TrainingProgress:
        return self

    def __exit__(self, *args: object) -> None:
        self.close()
