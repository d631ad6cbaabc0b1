"""The one exception type of the config system."""

from __future__ import annotations


class ConfigError(ValueError):
    """A user mistake in a config file, an override or a `_component_`.

    The message always names where the problem is (a config key path such as
    ``optimizer.lr``, an override as typed, or a file) and what to do about it.
    ``key`` holds the key path (``""`` for the whole config) when one applies. It is a
    ``ValueError``, so code that guards against bad values catches it too.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key
