"""One rank of ``tunesmith run --nproc_per_node N ...``: torchrun starts this file per rank.

``python _child.py <recipe module or .py file> --config <path> [key=value ...]`` runs the
recipe's ``recipe_main``. A user error (``UserError``) is not a crash: the rank writes its
one-line message to ``$TUNESMITH_ERROR_DIR/rank<N>.txt`` (the parent prints it once) and exits
with code 2; without that folder (torchrun run by hand) rank 0 prints ``error: ...``. Real bugs
raise as usual, so their traceback shows.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["ERROR_DIR_ENV", "USER_ERROR_EXIT", "first_user_error", "main", "script_main"]

ERROR_DIR_ENV = "TUNESMITH_ERROR_DIR"
USER_ERROR_EXIT = 2


def first_user_error(error_dir: Path) -> str | None:
    """The message rank 0 (else the lowest rank) wrote, or None when no rank wrote one."""
    found: list[tuple[int, str]] = []
    for path in error_dir.glob("rank*.txt"):
        try:
            found.append((int(path.stem[4:]), path.read_text(encoding="utf-8").strip()))
        except (ValueError, OSError):
            continue
    return min(found)[1] if found else None


def _report(error: BaseException) -> None:
    from tunesmith.cli.main import debug_enabled
    from tunesmith.config._errors import one_line

    rank = os.environ.get("RANK", "0")
    message = one_line(error)
    if debug_enabled():
        import traceback

        traceback.print_exception(error)
    error_dir = os.environ.get(ERROR_DIR_ENV)
    if error_dir and Path(error_dir).is_dir():
        (Path(error_dir) / f"rank{rank}.txt").write_text(message, encoding="utf-8")
    elif rank == "0":
        print(f"error: {message}", file=sys.stderr)


def main(argv: list[str]) -> int:
    """Run ``argv = [target, --config, path, overrides...]``; 2 on a user error."""
    from tunesmith.cli._noise import quiet_third_party
    from tunesmith.config._errors import UserError

    quiet_third_party()
    try:
        from tunesmith.cli._run import _recipe_main, _resolve_recipe
        from tunesmith.config import parse_recipe_args

        target, recipe_argv = argv[0], argv[1:]
        recipe_main = _recipe_main(*_resolve_recipe(target))
        recipe_main(parse_recipe_args(recipe_argv))
    except UserError as e:
        _report(e)
        return USER_ERROR_EXIT
    return 0


def script_main(recipe_main: Callable[[Any], None], recipe: str | None = None) -> int:
    """A recipe file run as a script (``python finetune.py --config ...``, or ``torchrun
    finetune.py ...``): the same checks and one-line user errors as ``tunesmith run``.

    Recipes end with ``raise SystemExit(script_main(recipe_main, "<name>"))``.
    """
    from tunesmith.cli._noise import quiet_third_party
    from tunesmith.config import parse_recipe_args, resolve_config_path, split_recipe_args
    from tunesmith.config._errors import UserError

    quiet_third_party()
    argv = sys.argv[1:]
    try:
        cfg = parse_recipe_args(argv)
        if recipe is not None:
            from tunesmith.recipes._checks import check_config

            config, overrides = split_recipe_args(argv)
            check_config(cfg, recipe, overrides, resolve_config_path(config))
        recipe_main(cfg)
    except UserError as e:
        _report(e)
        return USER_ERROR_EXIT
    return 0


if __name__ == "__main__":
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if not (p and Path(p).resolve() == Path(here))]
    sys.exit(main(sys.argv[1:]))
