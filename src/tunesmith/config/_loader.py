"""Load YAML configs and parse a recipe's command line (``--config <name|path> key=value ...``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import yaml
from omegaconf import DictConfig, OmegaConf

from tunesmith.config._bundled import resolve_config_path
from tunesmith.config._errors import ConfigError
from tunesmith.config._overrides import apply_overrides

__all__ = ["load_config", "parse_recipe_args", "split_recipe_args"]

_RECIPE_USAGE = "usage: <recipe>.py --config <name|path> [key=value ...] [~key ...]"


def load_config(path: str | os.PathLike[str]) -> DictConfig:
    """Load a YAML config file (or a bundled config by name) into a ``DictConfig``.

    Interpolations (``${...}``) stay lazy and resolve on access. Raises ``ConfigError`` for a
    missing file, invalid YAML (with the line) or a top level that is not a mapping.
    """
    resolved = resolve_config_path(path)
    try:
        # OmegaConf's YAML loader reads 3e-4 as a float (plain YAML 1.1 would give a string).
        cfg = OmegaConf.load(resolved)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{resolved}:{mark.line + 1}:{mark.column + 1}" if mark else str(resolved)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML ({problem}); fix the file at that line") from None
    except Exception as e:  # omegaconf rejects e.g. non-string keys
        raise ConfigError(
            f"{resolved}: cannot be used as a config ({e}); use string keys"
        ) from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(
            f"{resolved}: the top level must be a mapping of keys to values (key: value), "
            f"not a {type(cfg).__name__}"
        )
    return cfg


def split_recipe_args(argv: Sequence[str]) -> tuple[str, list[str]]:
    """Split ``--config X k=v ...`` into the config name/path and the overrides."""
    config: str | None = None
    overrides: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        token = args[i]
        if token in ("--config", "-c"):
            if i + 1 >= len(args) or args[i + 1].startswith("-"):
                raise ConfigError(f"--config needs a value: --config <name|path>. {_RECIPE_USAGE}")
            config = args[i + 1]
            i += 2
            continue
        if token.startswith("--config="):
            config = token.split("=", 1)[1]
        elif token.startswith("-") and not token.startswith("~"):
            raise ConfigError(
                f"unknown option '{token}': a recipe takes --config and then key=value overrides. "
                f"{_RECIPE_USAGE}"
            )
        else:
            overrides.append(token)
        i += 1
    if not config:
        raise ConfigError(
            f"no config given: pass --config <name|path> (run `tunesmith ls` for bundled configs). "
            f"{_RECIPE_USAGE}"
        )
    return config, overrides


def parse_recipe_args(argv: Sequence[str] | None = None) -> DictConfig:
    """Parse ``--config <name|path> [key=value ...]`` into the final config of a recipe run.

    Loads the config, applies the overrides and sets the log level from ``log_level``.
    With ``argv=None`` it reads ``sys.argv[1:]`` (a recipe run as a script, also under
    torchrun) and a mistake exits with a one-line message and code 2; with an explicit ``argv`` it
    raises ``ConfigError``.
    """
    from_command_line = argv is None
    args = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in args):
        print(_RECIPE_USAGE)
        raise SystemExit(0)
    try:
        config, overrides = split_recipe_args(args)
        cfg = apply_overrides(load_config(config), overrides)
        from tunesmith.utils._logging import configure_logging

        configure_logging(cfg.get("log_level", None))
    except ConfigError as e:
        if from_command_line:
            from tunesmith.config._errors import one_line

            print(f"error: {one_line(e)}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
    return cfg
