"""Optional dependencies, imported only when a feature needs them."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or fail with the pip command that installs the tunesmith extra holding it.

    Example: ``wandb = require("wandb", "loggers")``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{module} is not installed but this feature needs it; "
            f"install it with: pip install 'tunesmith[{extra}]'"
        ) from e
