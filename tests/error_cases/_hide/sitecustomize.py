"""Make the packages named in ``TS_HIDE_PACKAGES`` (comma-separated) look not installed.

Error cases about missing optional packages set ``TS_HIDE_PACKAGES``; in a subprocess this
folder goes on ``PYTHONPATH`` so Python runs this file at start-up, and in-process runs of the
error table install the same ``HidePackages`` finder for the length of the case. The case then
holds whether or not the package is installed on the machine running the tests.
"""

import os
import sys


class HidePackages:
    """A ``sys.meta_path`` finder that answers ``ModuleNotFoundError`` for ``names``."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return None


def hidden_from_env() -> set[str]:
    return {n.strip() for n in os.environ.get("TS_HIDE_PACKAGES", "").split(",") if n.strip()}


if hidden_from_env() and __name__ == "sitecustomize":
    sys.meta_path.insert(0, HidePackages(hidden_from_env()))
