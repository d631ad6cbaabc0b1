"""``tunesmith validate``: report every problem of a config at once, building nothing."""

from __future__ import annotations

import argparse
import sys

from tunesmith.config import apply_overrides, load_config, resolve_config_path, validate_config

__all__ = ["cmd_validate"]


def cmd_validate(args: argparse.Namespace) -> int:
    """Print each problem as ``error: <key>: <message>``; exit code 1 when there are errors."""
    path = resolve_config_path(args.config)
    cfg = apply_overrides(load_config(path), args.overrides)
    problems = validate_config(cfg)
    errors = [p for p in problems if p.severity == "error"]
    for problem in problems:
        print(
            f"{problem.severity}: {problem}", file=sys.stderr if problem in errors else sys.stdout
        )
    if errors:
        print(f"{path}: {len(errors)} problem(s) found", file=sys.stderr)
        return 1
    print(f"{path}: config is valid")
    return 0
