"""The user-error types: a mistake the user can fix gets one line, never a traceback.

``UserError`` is the base the CLI catches (``error: <message>``, exit code 2). Each area
derives its own: ``ConfigError`` (config files, overrides, components), ``DataRowError``
(``tunesmith.data``), checkpoint and output errors, ``MissingDependencyError`` (an optional
extra is not installed). Anything else that escapes a command is a bug and shows a
traceback. This module imports nothing, so the config system stays cheap to import.
"""

from __future__ import annotations

__all__ = ["ConfigError", "MissingDependencyError", "UserError", "one_line"]


class UserError(Exception):
    """A mistake in the user's input (config, command line, data, files, environment).

    The message names what is wrong, where (a key path, file, row) and what to do, ideally
    as ``<what> (<where>): <what to do>``. The CLI prints it as one ``error: ...`` line and
    exits with code 2.
    """


class ConfigError(UserError, ValueError):
    """A user mistake in a config file, an override or a `_component_`.

    The message always names where the problem is (a config key path such as
    ``optimizer.lr``, an override as typed, or a file) and what to do about it.
    ``key`` holds the key path (``""`` for the whole config) when one applies. It is a
    ``ValueError``, so code that guards against bad values catches it too.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class MissingDependencyError(UserError, ImportError):
    """An optional package a feature needs is not installed; the message names the extra."""

    def __init__(self, message: str, package: str, extra: str | None = None) -> None:
        super().__init__(message, name=package)
        self.package = package
        self.extra = extra


def one_line(error: BaseException) -> str:
    """The error's message on one line (whitespace, including newlines, collapsed)."""
    text = " ".join(str(error).split())
    return text or type(error).__name__
