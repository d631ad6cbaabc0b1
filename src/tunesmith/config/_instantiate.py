"""Build objects from ``_component_`` config nodes."""

from __future__ import annotations

from typing import Any

from omegaconf import Container, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tunesmith.config._components import resolve_component
from tunesmith.config._errors import ConfigError
from tunesmith.config._paths import join_key, node_path
from tunesmith.config._signature import binding_problems

__all__ = ["instantiate"]


def _to_plain(node: Any, path: str) -> Any:
    """Resolve interpolations and turn OmegaConf containers into dicts and lists."""
    if not isinstance(node, Container):
        return node
    try:
        return OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or path
        message = str(e).splitlines()[0]
        raise ConfigError(
            f"{key}: cannot resolve the value ({message}); fix the ${{...}} reference",
            key=key,
        ) from None


def _build(value: Any, path: str) -> Any:
    if isinstance(value, dict):
        if "_component_" in value:
            return _call(value, path, (), {})
        return {k: _build(v, join_key(path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_build(v, join_key(path, i)) for i, v in enumerate(value)]
    return value


def _call(node: dict[str, Any], path: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    component = node["_component_"]
    fn = resolve_component(component, key=join_key(path, "_component_"))
    config_kwargs = {
        k: _build(v, join_key(path, k))
        for k, v in node.items()
        if k != "_component_" and k not in kwargs
    }
    problems = binding_problems(
        fn, component, path, config_kwargs, args=args, call_kwargs=kwargs, missing_is_error=True
    )
    if problems:
        raise ConfigError("\n".join(str(p) for p in problems), key=problems[0].key)
    try:
        return fn(*args, **config_kwargs, **kwargs)
    except Exception as e:
        e.add_note(f"while instantiating {path or 'the config'} (_component_: {component})")
        raise


def instantiate(node: Any, *args: Any, **kwargs: Any) -> Any:
    """Call the ``_component_`` of a config node with the node's other keys as arguments.

    Nested nodes with a ``_component_`` (also inside lists) are built first, depth first.
    ``args`` are passed positionally before the config's keyword arguments; ``kwargs``
    override config keys of the same name. Interpolations are resolved against the whole
    config the node belongs to. ``None`` gives ``None``.

    Raises:
        ConfigError: naming the key path for an unknown component, an unknown or missing
            argument, or a value whose type contradicts the callable's annotation.
    """
    if node is None:
        return None
    path = node_path(node)
    if isinstance(node, ListConfig) or isinstance(node, list):
        raise ConfigError(
            f"{path or 'config'}: instantiate() needs a section with _component_, got a list; "
            "instantiate its items one by one",
            key=path,
        )
    if isinstance(node, DictConfig):
        plain = _to_plain(node, path)
    elif isinstance(node, dict):
        plain = {k: _to_plain(v, join_key(path, k)) for k, v in node.items()}
    else:
        raise ConfigError(
            f"instantiate() needs a config section with a _component_ key, got {type(node).__name__}"
        )
    if "_component_" not in plain:
        keys = ", ".join(str(k) for k in plain) or "(empty)"
        raise ConfigError(
            f"{path or 'config'}: no _component_ key (keys: {keys}); add "
            "'_component_: <dotted.path.to.callable>' to this section",
            key=path,
        )
    return _call(plain, path, args, kwargs)
