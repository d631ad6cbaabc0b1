"""Check config keys against a callable's signature before (or instead of) calling it."""

from __future__ import annotations

import difflib
import inspect
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

__all__ = ["Problem", "UNCHECKED", "binding_problems"]

UNCHECKED: Any = type("Unchecked", (), {"__repr__": lambda self: "<built component>"})()
"""Stands for a value whose type cannot be known without building it (a nested component)."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: where (key path), what and how to fix it."""

    key: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        return f"{self.key or '<root>'}: {self.message}"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _signature(fn: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def _type_hints(fn: Any) -> dict[str, Any]:
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        return typing.get_type_hints(target)
    except Exception:
        pass
    # Some annotation names only exist under TYPE_CHECKING: evaluate the others one by one.
    hints: dict[str, Any] = {}
    sig = _signature(target)
    namespace = getattr(inspect.unwrap(target), "__globals__", {})
    for name, param in sig.parameters.items() if sig else []:
        annotation = param.annotation
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, dict(namespace))  # noqa: S307 - annotation text
            except Exception:
                continue
        if annotation is not param.empty:
            hints[name] = annotation
    return hints


_SIMPLE = {int: "an int", float: "a number", str: "a string", bool: "true/false"}


def _accepts(value: Any, hint: Any) -> bool | None:
    """True/False when the hint is made only of simple types; None when it cannot tell."""
    if hint is Any or hint is inspect.Parameter.empty:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        results = [_accepts(value, h) for h in typing.get_args(hint)]
        if any(r is True for r in results):
            return True
        return False if all(r is False for r in results) else None
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float))
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (str, bool):
        return isinstance(value, hint)
    if hint in (list, tuple) or origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if hint is dict or origin is dict:
        return isinstance(value, dict)
    if getattr(hint, "__module__", "") == "torch" and getattr(hint, "__name__", "") == "Tensor":
        return False  # a config value (number, string, list) is never a tensor
    return None


def _describe_hint(hint: Any) -> str:
    if hint in _SIMPLE:
        return _SIMPLE[hint]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe_hint(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if inspect.isclass(hint) and typing.get_origin(hint) is None:
        return f"{hint.__module__}.{hint.__qualname__}".removeprefix("builtins.")
    return str(hint).replace("typing.", "")


def binding_problems(
    fn: Any,
    component: str,
    path: str,
    config_kwargs: dict[str, Any],
    *,
    args: tuple[Any, ...] = (),
    call_kwargs: dict[str, Any] | None = None,
    missing_is_error: bool = True,
) -> list[Problem]:
    """Everything that keeps ``fn(*args, **config_kwargs, **call_kwargs)`` from binding.

    Reports unknown argument names (listing the valid ones), missing required arguments
    (errors, or warnings when ``missing_is_error`` is False because a recipe may pass them)
    and values whose type clearly contradicts a simple annotation (``null`` is never
    flagged: it often means "use the default" despite a narrower annotation).
    """
    sig = _signature(fn)
    if sig is None:
        return []
    call_kwargs = call_kwargs or {}
    params = sig.parameters
    takes_var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    keywordable = [n for n in named if params[n].kind is not params[n].POSITIONAL_ONLY]
    problems: list[Problem] = []
    for key in config_kwargs:
        if key in keywordable or (takes_var_kw and key not in params):
            continue
        close = difflib.get_close_matches(key, keywordable, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        problems.append(
            Problem(
                _join(path, key),
                f"{component} has no argument '{key}'.{hint} Valid arguments: "
                f"{', '.join(keywordable) or '(none)'}. Rename or remove the key.",
            )
        )
    known = {k: v for k, v in {**config_kwargs, **call_kwargs}.items() if k in keywordable}
    try:
        bound = sig.bind_partial(*args, **known)
    except TypeError as e:
        duplicate = re.search(r"multiple values for argument '(\w+)'", str(e))
        if duplicate:
            name = duplicate.group(1)
            fix = f"the recipe passes '{name}' itself; remove '{name}' from {path or 'the config'}"
            problems.append(Problem(_join(path, name), f"{component}: {e}; {fix}"))
        else:
            problems.append(Problem(path, f"{component}: {e}; check the arguments given to it"))
        return problems
    for name in named:
        param = params[name]
        if name not in bound.arguments and param.default is param.empty:
            where = f"'{name}: <value>' under {path or 'the top level'} (or {_join(path, name)}=<value>)"
            if missing_is_error:
                message = f"{component} needs the argument '{name}', which is not set; add {where}"
            else:
                message = (
                    f"not set in the config; {component} needs it (fine if the recipe passes it, "
                    f"else add {where})"
                )
            problems.append(
                Problem(_join(path, name), message, "error" if missing_is_error else "warning")
            )
    hints = _type_hints(fn)
    for key, value in config_kwargs.items():
        if key not in hints or value is None or value is UNCHECKED or key in call_kwargs:
            continue
        if _accepts(value, hints[key]) is False:
            problems.append(
                Problem(
                    _join(path, key),
                    f"{component} expects {_describe_hint(hints[key])} for '{key}', got {value!r} "
                    f"({type(value).__name__}); fix the value",
                )
            )
    return problems
