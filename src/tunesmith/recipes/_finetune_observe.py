"""What the finetune recipe shows and records: progress bar, metric logger, profiler, curves.

All of it happens on rank 0 except the profiler (every rank traces its own steps).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from tunesmith.config import instantiate
from tunesmith.training.memory import get_memory_stats
from tunesmith.training.profiler import DummyProfiler
from tunesmith.training.progress import TrainingProgress
from tunesmith.utils import get_logger

__all__ = ["Observer"]

log = get_logger(__name__)


class Observer:
    """Progress bar + ``cfg.metric_logger`` + ``cfg.profiler`` + loss curve PNG at the end."""

    def __init__(
        self,
        cfg: DictConfig,
        *,
        rank: int,
        world_size: int,
        device: torch.device,
        total_steps: int,
        initial: int,
    ) -> None:
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self.memory = bool(cfg.get("log_peak_memory_stats", False))
        self.logger = None
        if rank == 0 and cfg.get("metric_logger") is not None:
            self.logger = instantiate(cfg.metric_logger)
            log_config = getattr(self.logger, "log_config", None)
            if callable(log_config):
                log_config(cfg)
        self.progress = TrainingProgress(total=total_steps, initial=initial, disable=rank != 0)
        self.history: list[tuple[int, float]] = []
        self._tokens: torch.Tensor | None = None
        self._since = time.perf_counter()

    @contextlib.contextmanager
    def profiler(self) -> Iterator[Any]:
        """``cfg.profiler`` (torchtune's ``setup_torch_profiler`` node) or a no-op profiler."""
        node = self.cfg.get("profiler")
        if node is None or not node.get("enabled", False):
            yield DummyProfiler()
            return
        prof = instantiate(node)
        prof = prof[0] if isinstance(prof, tuple) else prof
        with prof:
            yield prof

    def log_step(
        self,
        step: int,
        *,
        loss: float | None,
        lr: float,
        tokens: torch.Tensor,
        grad_norm: torch.Tensor | None,
    ) -> None:
        """Advance the bar every step; at log steps (``loss`` given, already on the host) write
        metrics. ``tokens`` (trained tokens of this step, all ranks) stays on the device until
        then, so steps in between never wait for the accelerator."""
        self._tokens = tokens if self._tokens is None else self._tokens + tokens
        if loss is None:
            self.progress.update(lr=lr)
            return
        now = time.perf_counter()
        tokens_per_second = int(self._tokens) / max(now - self._since, 1e-9)
        self._tokens, self._since = None, now
        self.progress.update(loss=loss, lr=lr, **{"tok/s": f"{tokens_per_second:,.0f}"})
        if self.rank != 0:
            return
        self.history.append((step, loss))
        metrics: dict[str, float] = {
            "loss": loss,
            "lr": lr,
            "tokens_per_second": tokens_per_second,  # trained tokens, all ranks
            "tokens_per_second_per_gpu": tokens_per_second / self.world_size,  # torchtune's
        }
        if grad_norm is not None:
            metrics["grad_norm"] = float(grad_norm)
        if self.memory:
            metrics.update(get_memory_stats(self.device, reset_stats=False))
        if self.logger is not None:
            self.logger.log_dict(metrics, step=step)

    def log_validation(self, step: int, val_loss: float) -> None:
        """Record the validation loss (``run_val_every_n_steps``)."""
        self.progress.write(f"step {step}: val_loss {val_loss:.4f}")
        if self.rank == 0 and self.logger is not None:
            self.logger.log_dict({"val_loss": val_loss}, step=step)

    def close(self) -> None:
        """Close the bar and logger; draw the loss/lr curve next to the DiskLogger's JSONL."""
        self.progress.close()
        if self.logger is None:
            return
        self.logger.close()
        path = getattr(self.logger, "path", None)
        if path is not None and Path(path).is_file() and self.history:
            try:
                from tunesmith.training.plot import plot_training_curves

                png = plot_training_curves(path)
                log.info("loss curve written to %s", png)
            except (ImportError, ValueError) as err:  # matplotlib missing / nothing to plot
                log.info("no loss curve: %s", err)
