"""Filled by its owner (see docs/CONTRIBUTING.md)."""

__all__: list[str] = []
