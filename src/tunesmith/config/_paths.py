"""Key paths of OmegaConf nodes, written the way overrides spell them (``a.b.0.c``)."""

from __future__ import annotations

from typing import Any

from omegaconf import Container


def join_key(parent: str, key: str | int) -> str:
    """``join_key("a.b", 0) -> "a.b.0"``; ``join_key("", "x") -> "x"``."""
    return f"{parent}.{key}" if parent else str(key)


def node_path(node: Any) -> str:
    """The dotted key path of an OmegaConf node inside its root (``""`` for the root or non-nodes)."""
    if not isinstance(node, Container):
        return ""
    parts: list[str] = []
    while node is not None and node._get_parent() is not None:
        parts.append(str(node._key()))
        node = node._get_parent()
    return ".".join(reversed(parts))
