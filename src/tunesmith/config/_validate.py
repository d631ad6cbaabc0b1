"""Check a whole config without building anything: components resolve, arguments bind."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from omegaconf import Container, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tunesmith.config._components import resolve_component
from tunesmith.config._errors import ConfigError
from tunesmith.config._paths import join_key
from tunesmith.config._signature import UNCHECKED, Problem, binding_problems

__all__ = ["validate_config"]


def _resolved(node: Any, key: Any, path: str, problems: list[Problem]) -> tuple[bool, Any]:
    """``node[key]`` with interpolations resolved; a failure becomes a problem at ``path``."""
    try:
        return True, node[key]
    except OmegaConfBaseException as e:
        message = str(e).splitlines()[0]
        fix = "fix the ${...} reference"
        missing = re.match(r"Interpolation key '([\w.]+)' not found", message)
        if missing:  # e.g. torchtune's maverick config: ${model_dir} is never defined
            fix += f", or define it: add {missing.group(1)}=<value> on the command line"
        problem = Problem(path, f"cannot resolve the value ({message}); {fix}")
        if problem not in problems:
            problems.append(problem)
        return False, None


def _missing_package(module: str, feature: str) -> str | None:
    """The one-line install hint when ``module`` (a component's ``REQUIRES``) is absent."""
    import importlib.util

    from tunesmith.utils._imports import EXTRAS

    try:
        if importlib.util.find_spec(module) is not None:
            return None
    except (ImportError, ValueError):
        pass
    extra = EXTRAS.get(module.split(".")[0])
    how = f"pip install 'tunesmith[{extra}]'" if extra else f"pip install {module}"
    return f"{module} is not installed ({feature} needs it): install it with {how}"


Supplied = Mapping[str, tuple[int, "frozenset[str] | set[str]"]]


def _supplied_for(path: str, supplied: Supplied) -> tuple[int, frozenset[str]]:
    """What the recipe passes to the component at ``path`` (``dataset`` or ``dataset.0``)."""
    top, *rest = path.split(".") if path else [""]
    if top in supplied and (not rest or (len(rest) == 1 and rest[0].isdigit())):
        n_args, kwargs = supplied[top]
        return n_args, frozenset(kwargs)
    return 0, frozenset()


def _check_component(
    node: DictConfig, path: str, problems: list[Problem], supplied: Supplied
) -> None:
    ok, component = _resolved(node, "_component_", join_key(path, "_component_"), problems)
    if not ok:
        return
    try:
        fn = resolve_component(component, key=join_key(path, "_component_"))
    except ConfigError as e:
        problems.append(Problem(e.key or path, str(e).split(": ", 1)[-1]))
        return
    except ImportError as e:
        problems.append(
            Problem(join_key(path, "_component_"), f"importing {component} failed: {e}")
        )
        return
    for module in getattr(fn, "REQUIRES", ()):
        missing = _missing_package(module, component.rsplit(".", 1)[-1])
        if missing is not None:
            problems.append(Problem(join_key(path, "_component_"), missing))
    kwargs: dict[str, Any] = {}
    for key in node:
        if key == "_component_":
            continue
        ok, value = _resolved(node, key, join_key(path, key), problems)
        if not ok:
            kwargs[key] = UNCHECKED
        elif isinstance(value, DictConfig) and "_component_" in value:
            kwargs[key] = UNCHECKED
        elif isinstance(value, Container):
            try:
                kwargs[key] = OmegaConf.to_container(value, resolve=True)
            except OmegaConfBaseException:
                kwargs[key] = UNCHECKED  # reported when the walk reaches it
        else:
            kwargs[key] = value
    n_args, call_kwargs = _supplied_for(path, supplied)
    problems.extend(
        binding_problems(
            fn,
            component,
            path,
            kwargs,
            args=(UNCHECKED,) * n_args,
            call_kwargs=dict.fromkeys(call_kwargs, UNCHECKED),
            missing_is_error=False,
        )
    )


def _walk(node: Any, path: str, problems: list[Problem], supplied: Supplied) -> None:
    if isinstance(node, DictConfig):
        if "_component_" in node:
            _check_component(node, path, problems, supplied)
        for key in node:
            if key == "_component_":
                continue
            ok, child = _resolved(node, key, join_key(path, key), problems)
            if ok and isinstance(child, (DictConfig, ListConfig)):
                _walk(child, join_key(path, key), problems, supplied)
    elif isinstance(node, ListConfig):
        for index in range(len(node)):
            ok, child = _resolved(node, index, join_key(path, index), problems)
            if ok and isinstance(child, (DictConfig, ListConfig)):
                _walk(child, join_key(path, index), problems, supplied)


def validate_config(cfg: DictConfig, supplied: Supplied | None = None) -> list[Problem]:
    """Every problem in ``cfg`` at once, in config order; nothing is instantiated.

    Checks that interpolations resolve, every ``_component_`` imports, config keys name real
    arguments of the callable, and simple-typed values match annotations. Required arguments
    the config leaves out are warnings (``severity="warning"``): recipes pass some of them
    (the model parameters to the optimizer, the tokenizer to the dataset). ``supplied`` maps
    a top-level component key to what the recipe passes itself (positional count, keyword
    names), e.g. ``{"optimizer": (1, set())}``; those draw no warning.
    """
    problems: list[Problem] = []
    _walk(cfg, "", problems, supplied or {})
    return problems
