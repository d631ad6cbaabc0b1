"""Up-front checks of a whole config for a recipe: unknown top-level keys and numeric ranges.

``tunesmith run`` calls ``check_config`` once, before any process starts or any model loads;
``tunesmith validate`` lists ``config_problems``. A top-level key is known when the recipe
declares it (``tunesmith.recipes._config_keys``), when another value references it
(``${name}``), or when it is the ``extra:`` mapping of deliberate extras. Keys inside
components are checked against the callable's signature (``tunesmith.config._signature``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig

from tunesmith.config import ConfigError, Problem
from tunesmith.config._ranges import range_problems
from tunesmith.recipes._config_keys import EXTRA_KEY, recipe_keys

__all__ = ["check_config", "config_problems", "unknown_key_problems"]

_REFERENCE = re.compile(r"\$\{\s*([A-Za-z_][\w-]*)")


def _strings(node: Any) -> Iterator[str]:
    """Every raw (unresolved) string value under ``node``."""
    if isinstance(node, DictConfig):
        for key in node:
            yield from _strings(node._get_node(key))
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            yield from _strings(node._get_node(i))
    elif node is not None:
        value = node._value() if hasattr(node, "_value") else node
        if isinstance(value, str):
            yield value


def referenced_keys(cfg: DictConfig) -> set[str]:
    """Top-level names that ``${...}`` interpolations anywhere in ``cfg`` refer to."""
    return {m.group(1) for text in _strings(cfg) for m in _REFERENCE.finditer(text)}


def _origin(key: str, overrides: Iterable[str], source: Path | None) -> str:
    for override in overrides:
        name = override.lstrip("+").split("=", 1)[0].strip()
        if name == key or name.startswith(key + "."):
            return f"override {override}"
    return source.name if source is not None else "config"


def unknown_key_problems(
    cfg: DictConfig,
    recipe: str,
    overrides: Iterable[str] = (),
    source: Path | None = None,
    keys: Iterable[str] | None = None,
) -> list[Problem]:
    """A ``Problem`` per top-level key that ``recipe`` neither reads nor accepts.

    ``keys`` declares the keys of a recipe outside the registry (a recipe file's
    ``CONFIG_KEYS``); without it an unregistered recipe's keys are not checked.
    """
    known = recipe_keys(recipe) if keys is None else frozenset(keys) | {EXTRA_KEY}
    if known is None:
        return []
    referenced = referenced_keys(cfg)
    problems: list[Problem] = []
    for key in cfg:
        key = str(key)
        if key in known or key in referenced:
            continue
        close = difflib.get_close_matches(key, sorted(known - {EXTRA_KEY}), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""
        problems.append(
            Problem(
                key,
                f"unknown config key for recipe {recipe} ({_origin(key, overrides, source)}): "
                f"{hint}Fix the name, or move a deliberate extra under '{EXTRA_KEY}:'",
            )
        )
    return problems


def config_problems(
    cfg: DictConfig,
    recipe: str | None,
    overrides: Iterable[str] = (),
    source: Path | None = None,
    keys: Iterable[str] | None = None,
) -> list[Problem]:
    """Unknown top-level keys (when the recipe is known) and out-of-range numbers."""
    problems = [] if recipe is None else unknown_key_problems(cfg, recipe, overrides, source, keys)
    return problems + range_problems(cfg)


def check_config(
    cfg: DictConfig,
    recipe: str | None,
    overrides: Iterable[str] = (),
    source: Path | None = None,
    keys: Iterable[str] | None = None,
) -> None:
    """Raise ``ConfigError`` for the first problem of ``config_problems``."""
    problems = config_problems(cfg, recipe, list(overrides), source, keys)
    if problems:
        first = problems[0]
        unknown = "unknown config key"
        if first.message.startswith(unknown):
            text = f"{unknown} '{first.key}'{first.message[len(unknown) :]}"
        else:
            text = str(first)
        raise ConfigError(text, key=first.key)
