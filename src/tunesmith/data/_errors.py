"""``DataError``: a user mistake in the data, told in one line."""

from __future__ import annotations

from tunesmith.config._errors import UserError

__all__ = ["DataError"]


class DataError(UserError, ValueError):
    """A problem with the data a user pointed at: a file, a row, a column, a split.

    Renders as ``<what> (<where>): <what to do>`` (the CLI prints ``error: `` before it and
    exits 2), e.g. ``malformed JSON (data/train.jsonl, line 12): fix the line or drop it``.
    ``where`` names the file, row, column (or config key) and ``fix`` what to change; both
    are optional. ``key`` is the config key at fault, when one applies.
    """

    def __init__(self, what: str, where: str = "", fix: str = "", *, key: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        self.key = key
        super().__init__(what + (f" ({where})" if where else "") + (f": {fix}" if fix else ""))


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A data file (or pattern) named in the config does not exist."""


class DataSourceUnreachableError(DataError, ConnectionError):
    """A hub dataset name with no network to fetch it."""
