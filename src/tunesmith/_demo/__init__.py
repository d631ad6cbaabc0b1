"""Data and helpers for `make demo` (python -m tunesmith.demo)."""
