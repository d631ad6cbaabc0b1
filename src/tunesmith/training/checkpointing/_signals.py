"""Graceful shutdown: turn SIGTERM / SIGINT into a flag the training loop checks.

Usage in a recipe::

    with GracefulShutdown() as shutdown:
        for step in ...:
            train_step()
            if shutdown.requested:          # checked at a step boundary
                save_resumable_checkpoint()
                shutdown.exit()             # exits the process with status 0

A second signal while the flag is already set restores the default behaviour and
re-raises it (so a stuck save can still be interrupted with Ctrl-C twice).
In a distributed run call :meth:`GracefulShutdown.requested_any_rank` so every rank
agrees on stopping at the same step.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

import torch

__all__ = ["GracefulShutdown"]


class GracefulShutdown:
    """Context manager that records SIGTERM/SIGINT instead of dying mid-step.

    Args:
        signals: signals to intercept (default SIGTERM and SIGINT).
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self.signals = signals
        self.requested = False
        self.received: int | None = None
        self._previous: dict[int, Any] = {}
        self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            # Second signal: give up being graceful.
            self.uninstall()
            signal.raise_signal(signum)
            return
        self.requested = True
        self.received = signum
        print(
            f"tunesmith: received {signal.Signals(signum).name}; saving a resumable "
            "checkpoint at the next step boundary, then exiting (send again to abort now)",
            file=sys.stderr,
            flush=True,
        )

    def install(self) -> GracefulShutdown:
        """Install the handlers (only possible from the main thread)."""
        if self._installed:
            return self
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("GracefulShutdown must be installed from the main thread")
        for sig in self.signals:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)
        self._installed = True
        return self

    def uninstall(self) -> None:
        """Restore the handlers that were there before :meth:`install`."""
        if not self._installed:
            return
        for sig, prev in self._previous.items():
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
        self._previous.clear()
        self._installed = False

    def requested_any_rank(self) -> bool:
        """True on every rank when any rank got a signal (all-reduce; plain flag if not distributed)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return self.requested
        backend = torch.distributed.get_backend()
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else None
        flag = torch.tensor([1 if self.requested else 0], dtype=torch.int32, device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def exit(self, code: int = 0) -> None:
        """Uninstall the handlers and exit the process (status 0 by default)."""
        self.uninstall()
        sys.exit(code)

    def __enter__(self) -> GracefulShutdown:
        return self.install()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.uninstall()
