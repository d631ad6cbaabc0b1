"""torchtune-private names that torchtune 0.6.1's own code and tests import, with the values
they take on tunesmith (the compatibility table points the torchtune names here)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def _torchao_at_least(major: int, minor: int) -> bool:
    try:
        parts = version("torchao").split("+")[0].split(".")
    except PackageNotFoundError:
        return False
    return (int(parts[0]), int(parts[1])) >= (major, minor)


_torchao_0_7_supported = _torchao_at_least(0, 7)
"""``torchtune.training.quantization._torchao_0_7_supported``: torchao >= 0.7 installed."""
