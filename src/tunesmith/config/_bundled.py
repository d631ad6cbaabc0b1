"""Bundled configs: ``src/tunesmith/configs/<family>/<name>.yaml``, named ``<family>/<name>``.

A config declares its recipe in its first lines, ``# recipe: finetune``; torchtune's own
header comment (``tune run lora_finetune_single_device --config ...``) is understood too, and
failing both its opening line ``# Config for ... in full_finetune_distributed.py``.
Discovery reads only those first lines: no YAML parsing and no torch import. Extra config
folders can be listed in ``TUNESMITH_CONFIG_PATH`` (``os.pathsep``-separated).
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from tunesmith.config._errors import ConfigError

__all__ = [
    "CONFIGS_DIR",
    "BundledConfig",
    "bundled_configs",
    "config_dirs",
    "read_recipe_header",
    "resolve_config_path",
]

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"
_HEADER_LINES = 40
_RECIPE_COMMENT = re.compile(r"^#\s*recipe\s*:\s*([\w./-]+)")
_TUNE_RUN = re.compile(
    r"\b(?:tune|tunesmith) run\s+(?:--?[\w-]+(?:[ =][^\s-]\S*)?\s+)*([\w./-]+)\s+--config"
)
_RECIPE_FILE = re.compile(r"^#\s*Config for\b.*\bin\s+([\w/-]+)\.py\b")


@dataclass(frozen=True)
class BundledConfig:
    """One config file found by :func:`bundled_configs`; ``recipe`` as declared (may be an alias)."""

    name: str
    path: Path
    recipe: str | None


def config_dirs() -> list[Path]:
    """The folders searched for configs: ``TUNESMITH_CONFIG_PATH`` entries, then the bundled folder."""
    extra = [Path(p) for p in os.environ.get("TUNESMITH_CONFIG_PATH", "").split(os.pathsep) if p]
    return [*extra, CONFIGS_DIR]


def read_recipe_header(path: Path) -> str | None:
    """The recipe a config file declares in its first lines, or None."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [line for _, line in zip(range(_HEADER_LINES), f, strict=False)]
    except OSError:
        return None
    for line in lines:
        match = _RECIPE_COMMENT.match(line.strip())
        if match:
            return match.group(1)
    for line in lines:
        if line.lstrip().startswith("#"):
            match = _TUNE_RUN.search(line)
            if match:
                return match.group(1)
    for line in lines:
        match = _RECIPE_FILE.match(line.strip())
        if match:
            return match.group(1)
    return None


def bundled_configs() -> dict[str, BundledConfig]:
    """All configs by name (``family/name``), sorted; earlier folders in :func:`config_dirs` win."""
    found: dict[str, BundledConfig] = {}
    for root in config_dirs():
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*.yaml")):
            name = path.relative_to(root).with_suffix("").as_posix()
            if name not in found:
                found[name] = BundledConfig(name, path, read_recipe_header(path))
    return dict(sorted(found.items()))


def resolve_config_path(name_or_path: str | os.PathLike[str]) -> Path:
    """An existing file path as given, else the bundled config of that name (``.yaml`` optional).

    Raises:
        ConfigError: naming the config and the closest bundled names when neither exists.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise ConfigError(
            f"config '{name_or_path}' is a folder; give a .yaml file or a bundled config name"
        )
    name = str(name_or_path).removesuffix(".yaml").removesuffix(".yml")
    configs = bundled_configs()
    if name in configs:
        return configs[name].path
    close = difflib.get_close_matches(name, list(configs), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"config '{name_or_path}' not found: no such file and no bundled config of that name.{hint} "
        "Check the path, or run `tunesmith ls` to list bundled configs."
    )
