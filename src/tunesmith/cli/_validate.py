"""``tunesmith validate``: report every problem of a config at once, building nothing."""

from __future__ import annotations

import argparse
import sys

from tunesmith.config import apply_overrides, load_config, resolve_config_path, validate_config

__all__ = ["cmd_validate"]


def cmd_validate(args: argparse.Namespace) -> int:
    """Print each error as ``error: <key>: <message>`` on stderr, warnings on stdout; 2 on errors."""
    path = resolve_config_path(args.config)
    cfg = apply_overrides(load_config(path), args.overrides)
    problems = validate_config(cfg)
    errors = [p for p in problems if p.severity == "error"]
    for problem in problems:
        if problem not in errors:
            print(f"{problem.severity}: {problem}")
    for problem in errors:
        print(f"error: {problem} ({path.name})", file=sys.stderr)
    if errors:
        print(f"{path}: {len(errors)} problem(s) found")
        return 2
    print(f"{path}: config is valid")
    return 0
