"""Command-line overrides: ``a.b.c=value``, ``~a.b`` (delete), ``+a.b=value`` (add).

Values are typed the way a YAML author would expect: ``4`` is an int, ``2e-5`` a float,
``true``/``false`` bools, ``null`` None, ``[1, 2]`` a list, ``{a: 1}`` a dict, ``'text'``
a string, ``${other.key}`` an interpolation kept for OmegaConf to resolve.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from tunesmith.config._errors import ConfigError

__all__ = ["apply_overrides", "parse_override", "parse_value"]

_SEGMENT = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_\-]*|\d+)$")
_INT = re.compile(r"^[+-]?\d[\d_]*$")
_FLOAT = re.compile(r"^[+-]?(?:\d[\d_]*\.\d*|\.\d+|\d[\d_]*)(?:[eE][+-]?\d+)?$|^[+-]?(?:inf|nan)$")
_NULLS = {"null", "Null", "NULL", "None", "~"}
_TRUE = {"true", "True", "TRUE"}
_FALSE = {"false", "False", "FALSE"}


def _example(key: str) -> str:
    return f"{key}=<value>"


def parse_value(text: str, override: str = "") -> Any:
    """Parse the right-hand side of an override into a typed Python value.

    Raises:
        ConfigError: for an unterminated quote or a malformed ``[...]`` / ``{...}`` value.
    """
    s = text.strip()
    where = f"override '{override}'" if override else f"value '{text}'"
    if s in _NULLS:
        return None
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    if _INT.match(s):
        return int(s.replace("_", ""))
    if _FLOAT.match(s):
        return float(s.replace("_", ""))
    if s[:1] in ("'", '"'):
        if len(s) < 2 or s[-1] != s[0]:
            raise ConfigError(
                f"{where}: unterminated quote in {s!r}; close it, e.g. {s[0]}{s[1:].rstrip(s[0])}{s[0]}"
            )
        return s[1:-1]
    if s.startswith("${"):
        if not s.endswith("}"):
            raise ConfigError(
                f"{where}: unterminated interpolation {s!r}; write it as ${{other.key}}"
            )
        return s
    if s[:1] in ("[", "{"):
        closing = "]" if s[0] == "[" else "}"
        try:
            value = yaml.safe_load(s)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(
                f"{where}: {s!r} is not a valid {'list' if closing == ']' else 'dict'} ({problem}); "
                f"write it like {'[1, 2, 3]' if closing == ']' else '{a: 1, b: two}'} and quote the "
                "whole override in your shell"
            ) from None
        return _retype(value)
    return s


def _retype(value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` as a string; type such items like top-level values."""
    if isinstance(value, list):
        return [_retype(v) for v in value]
    if isinstance(value, dict):
        return {k: _retype(v) for k, v in value.items()}
    if isinstance(value, str) and _FLOAT.match(value):
        return float(value.replace("_", ""))
    return value


def _split_key(key: str, override: str) -> list[str]:
    """``"a.b[0].c" -> ["a", "b", "0", "c"]`` with a clear error for malformed keys."""
    normalized = re.sub(r"\[(\d+)\]", r".\1", key)
    if not normalized:
        raise ConfigError(f"override '{override}': the key is empty; write key=value, e.g. seed=42")
    parts = normalized.split(".")
    for part in parts:
        if not part:
            raise ConfigError(
                f"override '{override}': key '{key}' has an empty segment; "
                "separate keys with single dots, e.g. optimizer.lr=1e-4"
            )
        if not _SEGMENT.match(part):
            raise ConfigError(
                f"override '{override}': '{part}' in key '{key}' is not a valid key name; use letters, "
                "digits and underscores, e.g. optimizer.lr=1e-4 (list items by index: a.b.0=...)"
            )
    return parts


def parse_override(override: str) -> tuple[str, list[str], Any]:
    """Split one override into ``(action, key parts, value)``; action is ``set`` or ``delete``."""
    if not isinstance(override, str):
        raise ConfigError(f"override {override!r} must be a string like key=value")
    text = override.strip()
    if text.startswith("~"):
        if "=" in text:
            raise ConfigError(
                f"override '{override}': '~' deletes a key and takes no value; write ~{text[1:].split('=')[0]}"
            )
        return "delete", _split_key(text[1:], override), None
    if text.startswith("-"):
        raise ConfigError(
            f"override '{override}' looks like an option; overrides are key=value "
            "(options such as --config go before them)"
        )
    if "=" not in text:
        raise ConfigError(
            f"override '{override}' has no '=': write {_example(text or 'key')} to set a key, "
            f"or ~{text or 'key'} to delete it"
        )
    key, _, raw = text.partition("=")
    key = key.strip().lstrip("+")
    return "set", _split_key(key, override), parse_value(raw, override)


def _describe(value: Any) -> str:
    if isinstance(value, DictConfig):
        keys = ", ".join(str(k) for k in list(value.keys())[:6])
        return f"a section (keys: {keys})"
    if isinstance(value, ListConfig):
        return f"a list of {len(value)} items"
    return f"{value!r} ({type(value).__name__})"


def _suggest(name: str, options: Iterable[Any]) -> str:
    names = [str(o) for o in options]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    if close:
        return f"did you mean {', '.join(close)}?"
    return f"existing keys: {', '.join(names[:12]) or '(none)'}"


def _child(node: Any, part: str, path: str, override: str, create: bool) -> Any:
    """Step from a container into one key, creating empty sections when ``create``."""
    if isinstance(node, ListConfig):
        if not part.isdigit() or int(part) >= len(node):
            raise ConfigError(
                f"override '{override}': {path or 'config'} is a list of {len(node)} items, so "
                f"'{part}' is not an item; use an index from 0 to {len(node) - 1}",
                key=path,
            )
        return node._get_node(int(part))
    child = node._get_node(part) if part in node else None
    here = f"{path}.{part}" if path else part
    if child is None or child._is_none():
        if not create:
            raise ConfigError(
                f"override '{override}': no key '{here}' to delete ({_suggest(part, node.keys())}); "
                "fix the key or drop the override",
                key=here,
            )
        node[part] = {}
        return node._get_node(part)
    return child


def _check_type(old: Any, new: Any, key: str, override: str) -> None:
    """Refuse overrides whose type clearly cannot replace the existing value."""
    if old is None or new is None:
        return
    if isinstance(old, str) and old.startswith("${"):
        return
    if isinstance(new, str) and new.startswith("${"):
        return
    fix = f"fix the value, or delete the key first with ~{key}"
    if isinstance(old, DictConfig) and not isinstance(new, dict):
        raise ConfigError(
            f"override '{override}': {key} is {_describe(old)}, not a single value; set one of its "
            f"keys ({key}.<name>=...), give a whole dict ({key}={{...}}), or delete it with ~{key}",
            key=key,
        )
    if isinstance(old, ListConfig) and not isinstance(new, list):
        raise ConfigError(
            f"override '{override}': {key} is a list; give a list like {key}=[a,b] "
            f"(a single item: {key}=[{new}]), or set one item with {key}.0=...",
            key=key,
        )
    if isinstance(old, bool):
        if not isinstance(new, bool):
            raise ConfigError(
                f"override '{override}': {key} is a bool ({old}); write {key}=true or {key}=false",
                key=key,
            )
    elif isinstance(old, (int, float)) and (
        isinstance(new, bool) or not isinstance(new, (int, float))
    ):
        kind = "an int" if isinstance(old, int) else "a number"
        raise ConfigError(
            f"override '{override}': {key} expects {kind} (currently {old!r}) but got {new!r}; {fix}",
            key=key,
        )


def apply_overrides(cfg: DictConfig, overrides: Iterable[str] | None) -> DictConfig:
    """Apply ``key=value`` / ``~key`` overrides to ``cfg`` in place and return it.

    New keys are created (with any missing parent sections); list items are addressed by
    index (``a.b.0=x`` or ``a.b[0]=x``); interpolations stay lazy. Raises ``ConfigError``
    naming the override and the key for any malformed or impossible override.
    """
    if cfg is None:
        cfg = OmegaConf.create({})
    for override in overrides or []:
        action, parts, value = parse_override(override)
        node: Any = cfg
        path = ""
        for part in parts[:-1]:
            child = _child(node, part, path, override, create=(action == "set"))
            path = f"{path}.{part}" if path else part
            if not isinstance(child, (DictConfig, ListConfig)):
                raise ConfigError(
                    f"override '{override}': {path} is {_describe(child._value())}, not a section, "
                    f"so it has no key '{'.'.join(parts[len(path.split('.')) :])}'; "
                    f"set {path}=<value> instead, or ~{path} first to replace it with a section",
                    key=path,
                )
            node = child
        last = parts[-1]
        key = ".".join(parts)
        if action == "delete":
            if isinstance(node, ListConfig):
                _child(node, last, path, override, create=False)  # checks the index
                del node[int(last)]
            elif last in node:
                del node[last]
            else:
                _child(node, last, path, override, create=False)  # raises with suggestions
            continue
        if isinstance(node, ListConfig):
            current = _child(node, last, path, override, create=False)
            _check_type(_plain(current), value, key, override)
            node[int(last)] = value
        else:
            current = node._get_node(last) if last in node else None
            _check_type(_plain(current), value, key, override)
            node[last] = value
    return cfg


def _plain(node: Any) -> Any:
    """The raw (unresolved) value of a node; containers are returned as they are."""
    if node is None or isinstance(node, (DictConfig, ListConfig)):
        return None if node is None or node._is_none() else node
    return node._value()
