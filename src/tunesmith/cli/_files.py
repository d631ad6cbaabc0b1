"""``tunesmith ls``, ``cp`` and ``cat``: the bundled recipes and configs (no torch import)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from tunesmith.config import (
    ConfigError,
    apply_overrides,
    bundled_configs,
    load_config,
    resolve_config_path,
)
from tunesmith.recipes import _registry

__all__ = ["cmd_cat", "cmd_cp", "cmd_ls", "format_table"]


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns separated by two spaces; a row may hold several lines per cell."""
    lines: list[list[str]] = [header]
    for row in rows:
        cells = [cell.splitlines() or [""] for cell in row]
        for i in range(max(len(c) for c in cells)):
            lines.append([c[i] if i < len(c) else "" for c in cells])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def cmd_ls(args: argparse.Namespace) -> int:
    """Print one row per recipe: name, torchtune aliases, configs declaring it."""
    configs = bundled_configs()
    rows: list[list[str]] = []
    claimed: set[str] = set()
    for recipe in _registry.RECIPES:
        names = {recipe.name, *recipe.aliases}
        mine = [c.name for c in configs.values() if c.recipe in names]
        claimed.update(mine)
        label = recipe.name + ("" if recipe.exists else " (not installed)")
        rows.append([label, "\n".join(recipe.aliases) or "-", "\n".join(mine) or "-"])
    others: dict[str, list[str]] = {}
    for config in configs.values():
        if config.name not in claimed:
            others.setdefault(config.recipe or "(no recipe declared)", []).append(config.name)
    for declared, names in sorted(others.items()):
        label = declared if declared.startswith("(") else f"{declared} (unknown recipe)"
        rows.append([label, "-", "\n".join(names)])
    print(format_table(["RECIPE", "ALIASES", "CONFIGS"], rows))
    return 0


def _source_file(source: str) -> tuple[Path, str]:
    """The file behind a recipe or config name and what it is (``recipe`` or ``config``)."""
    recipe = None if "/" in source else _registry.find_recipe(source)
    if recipe is not None:
        if not recipe.exists:
            raise ConfigError(
                f"recipe '{source}' ({recipe.module}) is not installed in this version of tunesmith; "
                "run `tunesmith ls` to see the available recipes"
            )
        return recipe.file, "recipe"
    try:
        return resolve_config_path(source), "config"
    except ConfigError as e:
        raise ConfigError(
            f"'{source}' is neither a recipe nor a config. {str(e).split(': ', 1)[-1]}"
        ) from None


def cmd_cp(args: argparse.Namespace) -> int:
    """Copy a bundled recipe or config; refuse to overwrite unless ``--force``."""
    src, kind = _source_file(args.source)
    dest = Path(args.destination).expanduser()
    if dest.is_dir():
        dest = dest / src.name
    elif not dest.suffix:
        dest = dest.with_suffix(src.suffix)
    if dest.exists() and not args.force:
        raise ConfigError(
            f"{dest} already exists; pass --force to overwrite it, or choose another path"
        )
    if not dest.parent.is_dir():
        if not args.make_parents:
            raise ConfigError(
                f"folder {dest.parent} does not exist; pass --make-parents to create it"
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    print(f"Copied {kind} {args.source} to {dest}")
    return 0


def cmd_cat(args: argparse.Namespace) -> int:
    """Print a config file as written, or the config after ``overrides`` when given."""
    try:
        path = resolve_config_path(args.config)
    except ConfigError:
        if "/" not in args.config and _registry.find_recipe(args.config) is not None:
            raise ConfigError(
                f"'{args.config}' is a recipe, not a config; `tunesmith ls` lists its configs and "
                f"`tunesmith cp {args.config} <dest>` copies its source"
            ) from None
        raise
    if not args.overrides:
        print(path.read_text(encoding="utf-8"), end="")
        return 0
    from omegaconf import OmegaConf

    cfg = apply_overrides(load_config(path), args.overrides)
    print(OmegaConf.to_yaml(cfg), end="")
    return 0
