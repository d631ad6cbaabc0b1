"""pytest plugin: ``pytest -p tunesmith.compat.pytest_plugin`` runs torchtune-era tests on tunesmith.

It installs the ``torchtune`` compatibility import (:func:`tunesmith.compat.install`) before
test collection; with a real torchtune installed it does nothing.
"""

from __future__ import annotations

from typing import Any

from tunesmith.compat import install


def pytest_configure(config: Any) -> None:
    """Install the finder once, before any test module is imported."""
    install()
