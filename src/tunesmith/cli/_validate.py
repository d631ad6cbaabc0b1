"""``tunesmith validate``: report every problem of a config at once, building nothing."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tunesmith.config import (
    apply_overrides,
    load_config,
    read_recipe_header,
    resolve_config_path,
    validate_config,
)

__all__ = ["cmd_validate", "config_recipe"]


def config_recipe(path: Path, given: str | None) -> str | None:
    """The registered recipe a config is for: ``--recipe``, else its ``# recipe:`` header."""
    from tunesmith.recipes import _registry

    if given:
        return _registry.get_recipe(given).name  # raises with suggestions
    declared = read_recipe_header(path)
    recipe = _registry.find_recipe(declared) if declared else None
    return recipe.name if recipe is not None else None


def cmd_validate(args: argparse.Namespace) -> int:
    """Print each error as ``error: <key>: <message>`` on stderr, warnings on stdout; 2 on errors.

    With the recipe known (``--recipe`` or the config's ``# recipe:`` header) top-level keys
    the recipe does not read are errors, and arguments it passes itself draw no warning.
    """
    from tunesmith.recipes._checks import config_problems
    from tunesmith.recipes._config_keys import SUPPLIED

    path = resolve_config_path(args.config)
    cfg = apply_overrides(load_config(path), args.overrides)
    recipe = config_recipe(path, getattr(args, "recipe", None))
    if recipe is None:
        print(
            f"warning: {path.name} names no recipe, so top-level keys are not checked; add a "
            "first line '# recipe: <name>' or pass --recipe <name>"
        )
    problems = validate_config(cfg, SUPPLIED) + config_problems(cfg, recipe, args.overrides, path)
    errors = [p for p in problems if p.severity == "error"]
    for problem in problems:
        if problem not in errors:
            print(f"{problem.severity}: {problem}")
    for problem in errors:
        print(f"error: {problem} ({path.name})", file=sys.stderr)
    if errors:
        print(f"{path}: {len(errors)} problem(s) found")
        return 2
    print(f"{path}: config is valid" + (f" for recipe {recipe}" if recipe else ""))
    return 0
