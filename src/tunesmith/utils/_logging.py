"""One log format for all of tunesmith; the level comes from the config's ``log_level``.

INFO and DEBUG records go to stdout, WARNING and above to stderr: stderr holds only what
needs attention, and a user error is the one ``error: ...`` line there.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

from tunesmith.config._errors import ConfigError

__all__ = [
    "LOG_FORMAT",
    "configure_logging",
    "get_logger",
    "log_rank_zero",
    "write_clear_of_progress_bars",
]

LOG_FORMAT = "%(levelname)s %(asctime)s %(name)s:%(lineno)d] %(message)s"
_ROOT = "tunesmith"
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def write_clear_of_progress_bars(text: str, stream: TextIO) -> None:
    """Write the line ``text`` to ``stream`` without breaking a live tqdm progress bar.

    A bar on the same terminal (stdout and stderr count as one) is cleared first and drawn
    again below the line, as ``tqdm.write`` does; with no bar it is a plain write + flush.
    """
    tqdm_module = sys.modules.get("tqdm")  # no tqdm imported yet: no bar can be showing
    bars = getattr(getattr(tqdm_module, "tqdm", None), "_instances", None)
    if not bars:
        stream.write(text + "\n")
        stream.flush()
        return
    with tqdm_module.tqdm.external_write_mode(file=stream):
        stream.write(text + "\n")
        stream.flush()


class _StderrHandler(logging.StreamHandler):
    """Writes WARNING+ to whatever ``sys.stderr`` is at the time, the rest to ``sys.stdout``,
    above any live progress bar rather than into its line.

    The stream is looked up per record, so redirection and capture work.
    """

    def emit(self, record: logging.LogRecord) -> None:
        self._to_stderr = record.levelno >= logging.WARNING
        try:
            write_clear_of_progress_bars(self.format(record), self.stream)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr if getattr(self, "_to_stderr", True) else sys.stdout

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def _root_logger() -> logging.Logger:
    root = logging.getLogger(_ROOT)
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return root


def get_logger(name: str | None = None) -> logging.Logger:
    """A logger under the ``tunesmith`` hierarchy (``__main__`` becomes ``tunesmith.__main__``).

    A level name (``"INFO"``, ``"DEBUG"``, ...) is torchtune's ``get_logger(level)``: the
    ``tunesmith`` logger at that level.
    """
    _root_logger()
    if name and name.upper() in logging.getLevelNamesMapping():
        logger = logging.getLogger(_ROOT)
        logger.setLevel(name.upper())
        return logger
    if not name or name == _ROOT:
        return logging.getLogger(_ROOT)
    if not name.startswith(_ROOT + "."):
        name = f"{_ROOT}.{name}"
    return logging.getLogger(name)


def log_rank_zero(logger: logging.Logger, msg: str, level: int = logging.INFO) -> None:
    """Log ``msg`` on rank 0 only (every call when not distributed)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return
    logger.log(level, msg, stacklevel=2)


def configure_logging(level: str | int | None = None, *, rank_zero_only: bool = True) -> None:
    """Set the tunesmith log level (``"DEBUG"``, ``"info"``, ``logging.WARNING``; None = INFO).

    With ``rank_zero_only``, processes whose ``RANK`` is not 0 log only warnings and errors.

    Raises:
        ConfigError (a ValueError): naming ``log_level`` and the accepted values.
    """
    if level is None:
        value = logging.INFO
    elif isinstance(level, int) and not isinstance(level, bool):
        value = level
    elif isinstance(level, str) and level.strip().upper() in _LEVELS:
        value = getattr(logging, level.strip().upper())
    else:
        raise ConfigError(
            f"log_level: {level!r} is not a log level; use one of {', '.join(_LEVELS)}"
        )
    if rank_zero_only and os.environ.get("RANK", "0") != "0":
        value = max(value, logging.WARNING)
    _root_logger().setLevel(value)
