"""The text log of one training run, kept in its log folder (``run.log``).

A training recipe calls :func:`start_run_log` first thing, before its log folder is known:
from then on tunesmith's log records are kept in memory. The recipe's observer calls
:func:`attach_run_log` with the folder once the config and logger are set up: the kept
records are written out and later ones appended (a resumed run appends to the same file), so
everything said before step 1 (runtime, data warnings, the run summary) is in the folder too.
:func:`stop_run_log` closes it at the end.
"""

from __future__ import annotations

import collections
import logging
import os
from pathlib import Path
from typing import TextIO

__all__ = ["attach_run_log", "start_run_log", "stop_run_log"]

_FORMAT = "%(levelname)s %(asctime)s %(name)s:%(lineno)d] %(message)s"
_KEPT = 5000  # records held in memory before a file is attached (oldest dropped first)


class _RunLogHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.setFormatter(logging.Formatter(_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
        self.kept: collections.deque[str] = collections.deque(maxlen=_KEPT)
        self.file: TextIO | None = None
        self.path: Path | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            if self.file is None:
                self.kept.append(line)
                return
            self.file.write(line + "\n")
            self.file.flush()
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        super().close()


_handler: _RunLogHandler | None = None


def start_run_log() -> None:
    """Begin keeping tunesmith's log records for this run (any earlier run's are dropped)."""
    from tunesmith.utils._logging import get_logger

    stop_run_log()
    global _handler
    _handler = _RunLogHandler()
    get_logger().addHandler(_handler)


def attach_run_log(folder: str | os.PathLike[str], name: str = "run.log") -> Path | None:
    """Write the kept records to ``folder/name`` and append later ones there; returns the
    path (None when :func:`start_run_log` was not called)."""
    if _handler is None:
        return None
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if _handler.file is not None:
        _handler.file.close()
    _handler.file = open(path, "a", encoding="utf-8")  # noqa: SIM115
    _handler.path = path
    while _handler.kept:
        _handler.file.write(_handler.kept.popleft() + "\n")
    _handler.file.flush()
    return path


def stop_run_log() -> None:
    """Stop keeping records; close the file."""
    from tunesmith.utils._logging import get_logger

    global _handler
    if _handler is not None:
        get_logger().removeHandler(_handler)
        _handler.close()
        _handler = None
