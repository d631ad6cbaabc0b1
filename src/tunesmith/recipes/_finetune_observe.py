"""What the training recipes show and record: the run summary, progress bar, metric logger,
profiler, compile time and loss curve.

All of it happens on rank 0 except the profiler (every rank traces its own steps).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from tunesmith.config import instantiate
from tunesmith.recipes._run_summary import summary_lines
from tunesmith.training.memory import get_memory_stats, log_memory_stats
from tunesmith.training.profiler import DummyProfiler
from tunesmith.training.progress import TrainingProgress
from tunesmith.utils import atomic_write_json, attach_run_log, get_logger, stop_run_log

__all__ = ["Observer"]

log = get_logger(__name__)


class Observer:
    """Run summary + progress bar + ``cfg.metric_logger`` + ``cfg.profiler`` + compile time +
    loss curve PNG at the end. Create it right before the loop: its clock starts then.

    ``summary`` (from :func:`~tunesmith.recipes._run_summary.describe_run`) is printed as a
    few INFO lines and written to ``run_summary.json`` in the metrics folder (the DiskLogger's
    ``log_dir``, else ``output_dir``). When resuming (``cfg.resume_from_checkpoint``) the
    logger is told the step it continues from (``logger.resume(initial)``), so one metrics
    file holds every step once.
    """

    def __init__(
        self,
        cfg: DictConfig,
        *,
        rank: int,
        world_size: int,
        device: torch.device,
        total_steps: int,
        initial: int,
        summary: dict[str, Any] | None = None,
        curves: tuple[str, ...] = ("loss", "lr"),
    ) -> None:
        self.cfg = cfg
        self.curves = curves  # the metrics drawn in the PNG at the end
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self.memory = bool(cfg.get("log_peak_memory_stats", False))
        if self.memory and rank == 0:  # setup's peak, then a new interval (torchtune's order)
            log_memory_stats(get_memory_stats(device, reset_stats=True))
        self.logger = None
        if rank == 0 and cfg.get("metric_logger") is not None:
            self.logger = instantiate(cfg.metric_logger)
            resume = getattr(self.logger, "resume", None)
            if cfg.get("resume_from_checkpoint", False) and callable(resume):
                resume(initial)
            log_config = getattr(self.logger, "log_config", None)
            if callable(log_config):
                log_config(cfg)
        self.summary = summary
        self.summary_path: Path | None = None
        self._earlier_starts: list[dict[str, Any]] = []
        if rank == 0 and summary is not None:
            self._announce(summary)
        self._compiling = bool(cfg.get("compile", False)) and rank == 0
        self._step_seconds: list[float] = []
        self.progress = TrainingProgress(total=total_steps, initial=initial, disable=rank != 0)
        self.history: list[tuple[int, float]] = []
        self._tokens: torch.Tensor | None = None
        self._since = self._last_step_end = time.perf_counter()

    # ---- before step 1 -------------------------------------------------------------------
    def _announce(self, summary: dict[str, Any]) -> None:
        """Print the summary and keep it (with earlier starts of this run) in the log folder."""
        output = summary.setdefault("output", {})
        path = getattr(self.logger, "path", None)
        if path is not None:
            output["metrics_file"] = str(path)
        elif self.logger is not None:
            where = getattr(self.logger, "log_dir", None)
            output["metrics"] = f"{type(self.logger).__name__}" + (f" ({where})" if where else "")
        folder = getattr(self.logger, "log_dir", None) or self.cfg.get("output_dir")
        if folder is not None:
            self.summary_path = Path(folder) / "run_summary.json"
            output["summary_file"] = str(self.summary_path)
        if folder is not None:
            run_log = attach_run_log(folder)  # what was logged so far, and from now on
            if run_log is not None:
                output["log_file"] = str(run_log)
        summary["started_at"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self._earlier_starts = _earlier_starts(self.summary_path) if "resume" in summary else []
        for line in summary_lines(summary):
            log.info("%s", line)
        if "compile" in summary:
            log.info(
                "compiling the model (torch.compile: %s); the first step includes compiling",
                summary["compile"]["what"],
            )
        self._write_summary()

    def _write_summary(self) -> None:
        if self.summary_path is None or self.summary is None:
            return
        record = dict(self.summary)
        if self._earlier_starts:
            record["earlier_starts"] = self._earlier_starts
        self.summary_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.summary_path, record)

    def _time_compile(self) -> None:
        """Compile overhead = step 1's wall time minus step 2's (said once, after step 2)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self._step_seconds.append(now - self._last_step_end)
        self._last_step_end = now
        if len(self._step_seconds) == 2:
            self._report_compile()

    def _report_compile(self) -> None:
        self._compiling = False
        times = self._step_seconds
        if len(times) >= 2:
            seconds = max(times[0] - times[1], 0.0)
            log.info(
                "torch.compile: done in %.1f s (first step %.1f s minus the next step's %.2f s; "
                "new shapes later may compile again)",
                seconds, times[0], times[1],
            )  # fmt: skip
        elif times:
            seconds = times[0]
            log.info("torch.compile: the only step took %.1f s, compiling included", seconds)
        else:
            return
        if self.summary is not None and "compile" in self.summary:
            self.summary["compile"].update(
                seconds=round(seconds, 3), first_step_seconds=round(times[0], 3)
            )
            self._write_summary()

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
        postfix: dict[str, str] | None = None,
        extra: dict[str, float] | None = None,
    ) -> None:
        """Advance the bar every step; at log steps (``loss`` given, already on the host) write
        metrics. ``postfix``: more values for the bar (e.g. the RL recipes' mean reward);
        ``extra``: more metrics of this log step (e.g. MoE router statistics). ``tokens`` (trained tokens of this step, all ranks) stays on the device until
        then, so steps in between never wait for the accelerator."""
        if self._compiling:
            self._time_compile()
        self._tokens = tokens if self._tokens is None else self._tokens + tokens
        if loss is None:
            self.progress.update(lr=lr, **(postfix or {}))
            return
        now = time.perf_counter()
        tokens_per_second = int(self._tokens) / max(now - self._since, 1e-9)
        self._tokens, self._since = None, now
        self.progress.update(
            loss=loss, lr=lr, **{"tok/s": f"{tokens_per_second:,.0f}"}, **(postfix or {})
        )
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
        metrics.update(extra or {})
        if self.memory:
            metrics.update(get_memory_stats(self.device, reset_stats=True))  # this interval
        if self.logger is not None:
            self.logger.log_dict(metrics, step=step)

    def log_validation(self, step: int, val_loss: float) -> None:
        """Record the validation loss (``run_val_every_n_steps``)."""
        self.progress.write(f"step {step}: val_loss {val_loss:.4f}")
        if self.rank == 0 and self.logger is not None:
            self.logger.log_dict({"val_loss": val_loss}, step=step)

    def close(self) -> None:
        """Close the bar and logger; draw the loss/lr curve next to the DiskLogger's JSONL."""
        if self._compiling:
            self._report_compile()
        self.progress.close()
        if self.logger is None:
            stop_run_log()
            return
        self.logger.close()
        path = getattr(self.logger, "path", None)
        if path is not None and Path(path).is_file() and self.history:
            try:
                from tunesmith.training.plot import plot_training_curves

                png = plot_training_curves(path, metrics=self.curves)
                log.info("loss curve written to %s", png)
            except (ImportError, ValueError) as err:  # matplotlib missing / nothing to plot
                log.info("no loss curve: %s", err)
        stop_run_log()


def _earlier_starts(path: Path | None) -> list[dict[str, Any]]:
    """The starts recorded in an existing ``run_summary.json`` (oldest first)."""
    if path is None or not path.is_file():
        return []
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(earlier, dict):
        return []
    starts = earlier.pop("earlier_starts", [])
    return [*starts, earlier] if isinstance(starts, list) else [earlier]
