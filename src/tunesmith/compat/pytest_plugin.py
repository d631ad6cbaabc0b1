"""pytest plugin: ``pytest -p tunesmith.compat.pytest_plugin`` runs torchtune-era tests on tunesmith.

It installs the ``torchtune`` compatibility import (:func:`tunesmith.compat.install`) before
test collection (with a real torchtune installed it installs nothing), and, where the
``pytest-integration`` plugin that torchtune's own ``tests/conftest.py`` reads is absent,
registers its ``--with[out]-integration`` / ``--with[out]-slow-integration`` options with
defaults that select unit tests only (so that conftest downloads no recipe artifacts).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from tunesmith.compat import install


def pytest_addoption(parser: Any) -> None:
    """torchtune's conftest reads ``config.option.run_integration`` / ``run_slow_integration``."""
    if importlib.util.find_spec("pytest_integration") is not None:
        return
    group = parser.getgroup("tunesmith-compat")
    for flag, dest in (
        ("integration", "run_integration"),
        ("slow-integration", "run_slow_integration"),
    ):
        group.addoption(f"--with-{flag}", dest=dest, action="store_true", default=False)
        group.addoption(f"--without-{flag}", dest=dest, action="store_false")


def pytest_load_initial_conftests(early_config: Any, parser: Any, args: list[str]) -> None:
    """Install the finder before the first conftest (torchtune's imports torchtune)."""
    install()


def pytest_configure(config: Any) -> None:
    """Install the finder (again a no-op) where the plugin was registered late."""
    install()
