"""Optional dependencies, imported only when a feature needs them."""

from __future__ import annotations

import importlib
from types import ModuleType

from tunesmith.config._errors import MissingDependencyError

__all__ = ["EXTRAS", "require"]

EXTRAS: dict[str, str] = {
    "wandb": "wandb",
    "tensorboard": "tensorboard",
    "comet_ml": "comet",
    "mlflow": "mlflow",
    "bitsandbytes": "bnb",
    "lm_eval": "eval",
    "matplotlib": "plot",
}
"""Top-level package -> the tunesmith extra (pyproject ``optional-dependencies``) holding it."""


def require(module: str, extra: str | None = None, feature: str | None = None) -> ModuleType:
    """Import ``module`` or raise ``MissingDependencyError`` naming the extra that installs it.

    ``extra`` defaults to the one listed in ``EXTRAS`` for the top-level package; ``feature``
    (e.g. ``"TensorBoardLogger"``) says what needs it. Example: ``require("wandb")``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        package = module.split(".")[0]
        missing = getattr(e, "name", None) or package
        if missing.split(".")[0] != package and missing.split(".")[0] in EXTRAS:
            package = missing.split(".")[0]  # the module imports another optional package
        extra = extra or EXTRAS.get(package)
        how = f"pip install 'tunesmith[{extra}]'" if extra else f"pip install {package}"
        needs = f" ({feature} needs it)" if feature else ""
        raise MissingDependencyError(
            f"{package} is not installed{needs}: install it with {how}", package, extra
        ) from e
