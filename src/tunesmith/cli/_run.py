"""``tunesmith run``: one process, or torchrun (``torch.distributed.run``) when launch flags are given."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from tunesmith.config import (
    ConfigError,
    parse_recipe_args,
    read_recipe_header,
    resolve_config_path,
    split_recipe_args,
)
from tunesmith.recipes import _registry
from tunesmith.recipes._registry import Recipe
from tunesmith.utils import get_logger

__all__ = ["build_run_parser", "run_command"]

_EPILOG = """\
Without torchrun options the recipe runs in this process. With any of them
(--nproc_per_node, --nnodes, --rdzv_*, --master_addr, ...) it is launched through
torch.distributed.run, which starts one process per rank running the recipe file.

examples:
  tunesmith run finetune --config llama3_2/1B_lora_single_device max_steps_per_epoch=10
  tunesmith run lora_finetune_single_device --config ./my.yaml   (torchtune name)
  tunesmith run --nproc_per_node 4 finetune --config llama3_1/8B_full
  tunesmith run ./my_recipe.py --config ./my.yaml
"""


def build_run_parser() -> argparse.ArgumentParser:
    """``tunesmith run``'s parser: torchrun's own options, then the recipe and its arguments."""
    from torch.distributed.run import get_args_parser

    from tunesmith.cli.main import UsageParser

    parser = UsageParser(
        prog="tunesmith run",
        usage="tunesmith run [torchrun options] <recipe> --config <name|path> [key=value ...]",
        description="Run a recipe with a config and command-line overrides.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    group = parser.add_argument_group("torchrun options (launch through torch.distributed.run)")
    for action in get_args_parser()._actions:
        if action.dest not in ("help", "training_script", "training_script_args"):
            group._add_action(action)
    parser.add_argument(
        "recipe", help="recipe name or torchtune alias (see `tunesmith ls`), or a .py file"
    )
    parser.add_argument(
        "recipe_args",
        nargs=argparse.REMAINDER,
        help="--config <name|path> followed by key=value overrides and ~key deletions",
    )
    return parser


def _resolve_recipe(name: str) -> tuple[Recipe | None, Path | None]:
    """The registry entry or a local .py file for the ``recipe`` argument. An existing file
    wins over a recipe of the same name (``tunesmith run lora_finetune_single_device.py`` in a
    folder holding torchtune's file runs that file)."""
    local = Path(name).expanduser()
    if local.suffix == ".py" and local.is_file():
        return None, local.resolve()
    recipe = _registry.find_recipe(name)
    if recipe is not None:
        if not recipe.exists:
            raise ConfigError(
                f"recipe '{name}' maps to {recipe.module}, which is not installed in this version "
                f"of tunesmith ({recipe.file} is missing); run `tunesmith ls` to see the recipes"
            )
        return recipe, recipe.file
    path = Path(name).expanduser()
    if path.suffix == ".py":
        if not path.is_file():
            raise ConfigError(f"recipe file {path} not found; check the path")
        return None, path.resolve()
    _registry.get_recipe(name)  # raises with suggestions
    raise AssertionError("unreachable")


def _load_module(recipe: Recipe | None, path: Path) -> ModuleType:
    if recipe is not None:
        return importlib.import_module(recipe.module)
    from tunesmith.compat import install_if_needed

    install_if_needed()  # a torchtune-era recipe file's `import torchtune` (never a real one's)
    spec = importlib.util.spec_from_file_location(f"tunesmith_user_recipe_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load recipe file {path}; is it a Python file?")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    spec.loader.exec_module(module)
    return module


def run_command(argv: list[str]) -> int:
    """Parse ``tunesmith run`` arguments and run or launch the recipe; returns the exit code."""
    if not argv or argv[0] in ("-h", "--help"):
        build_run_parser().print_help()
        return 0 if argv else 1
    parser = build_run_parser()
    args = parser.parse_args(argv)
    launch_flags = argv[: len(argv) - len(args.recipe_args) - 1]
    if any(a in ("-h", "--help") for a in args.recipe_args):
        parser.print_help()
        return 0
    for token in args.recipe_args:
        option = token.split("=", 1)[0]
        if option.startswith("--") and option in parser._option_string_actions:
            raise ConfigError(
                f"torchrun option '{option}' must come before the recipe: "
                f"tunesmith run {token} ... {args.recipe} --config <name|path> [key=value ...]"
            )
    recipe, script = _resolve_recipe(args.recipe)
    config, overrides = split_recipe_args(args.recipe_args)
    config_path = resolve_config_path(config).resolve()
    recipe_argv = ["--config", str(config_path), *overrides]
    cfg = parse_recipe_args(recipe_argv)  # fail fast, once, before any process starts
    _warn_on_recipe_mismatch(recipe, config_path)
    if launch_flags and recipe is not None and not recipe.supports_distributed:
        raise ConfigError(
            f"recipe '{args.recipe}' runs in a single process; drop the torchrun options "
            f"({' '.join(launch_flags)})"
        )
    if launch_flags:
        _check_launch_flags(launch_flags)
    recipe_main = _recipe_main(recipe, script)
    from tunesmith.recipes._checks import check_config

    keys = getattr(sys.modules.get(recipe_main.__module__), "CONFIG_KEYS", None)
    name = recipe.name if recipe is not None else script.stem
    check_config(cfg, name, overrides, config_path, keys)  # before any process or model
    _check_components(cfg)
    if launch_flags:
        return _launch(launch_flags, recipe, script, recipe_argv)
    recipe_main(cfg)
    return 0


def _check_components(cfg: Any) -> None:
    """Raise the first error ``tunesmith validate`` would report (a misspelt argument or
    component, a broken interpolation), so it costs no model load."""
    from tunesmith.config import validate_config
    from tunesmith.recipes._config_keys import SUPPLIED

    for problem in validate_config(cfg, SUPPLIED):
        if problem.severity == "error":
            raise ConfigError(str(problem), key=problem.key)


def _recipe_main(recipe: Recipe | None, script: Path) -> Callable[[Any], None]:
    module = _load_module(recipe, script)
    recipe_main = getattr(module, "recipe_main", None)
    if not callable(recipe_main):
        raise ConfigError(
            f"{script} defines no recipe_main(cfg); a recipe exposes "
            "`def recipe_main(cfg: DictConfig) -> None`"
        )
    return recipe_main


def _warn_on_recipe_mismatch(recipe: Recipe | None, config_path: Path) -> None:
    declared = read_recipe_header(config_path)
    if recipe is None or declared is None:
        return
    if _registry.find_recipe(declared) is not recipe:
        get_logger("tunesmith.cli").warning(
            f"{config_path.name} declares '# recipe: {declared}' but runs with '{recipe.name}'"
        )


def _check_launch_flags(launch_flags: list[str]) -> None:
    """One line for torchrun option values torchrun itself answers with a traceback."""
    from torch.distributed.run import config_from_args, get_args_parser

    launch = get_args_parser().parse_args([*launch_flags, "recipe.py"])
    nproc = str(launch.nproc_per_node)
    if nproc not in ("auto", "cpu", "gpu", "xpu") and not (nproc.isdigit() and int(nproc) >= 1):
        raise ConfigError(
            f"--nproc_per_node {nproc} is not a process count (torchrun option): give an integer "
            ">= 1, or auto, gpu or cpu"
        )
    parts = str(launch.nnodes).split(":")
    if (
        len(parts) > 2
        or not all(p.isdigit() and int(p) >= 1 for p in parts)
        or (len(parts) == 2 and int(parts[0]) > int(parts[1]))
    ):
        raise ConfigError(
            f"--nnodes {launch.nnodes} is not a node count (torchrun option): give N or MIN:MAX "
            "with integers >= 1, e.g. --nnodes 1 or --nnodes 1:4"
        )
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # else config_from_args prints a banner
    try:
        config_from_args(launch)
    except (ValueError, TypeError, AssertionError) as e:  # torch asserts on option values
        raise ConfigError(
            f"torchrun options rejected ({e or type(e).__name__}): see `tunesmith run --help`"
        ) from None


def _launch(
    launch_flags: list[str], recipe: Recipe | None, script: Path, recipe_argv: list[str]
) -> int:
    """Start the recipe under torch.distributed.run (one ``tunesmith.cli._child`` per rank).

    A user error in the ranks is one ``error: ...`` line (rank 0's, else the lowest rank's)
    and exit code 2, not torchrun's ChildFailedError report.
    """
    import logging
    import tempfile

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    from tunesmith.cli import _child

    target = recipe.name if recipe is not None else str(script)
    # torchrun logs every failed rank at ERROR and repeats it in the exception; the one
    # line below says what went wrong.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    # torchrun sets OMP_NUM_THREADS=1 per rank when unset, with a four-line banner; the same
    # default without the banner.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="tunesmith-errors-") as error_dir:
        os.environ[_child.ERROR_DIR_ENV] = error_dir
        try:
            run(
                get_args_parser().parse_args([*launch_flags, _child.__file__, target, *recipe_argv])
            )
        except ChildFailedError as e:
            message = _child.first_user_error(Path(error_dir))
            if message is not None:
                print(f"error: {message}", file=sys.stderr)
                return 2
            failed = ", ".join(
                f"rank {rank} (exit code {failure.exitcode})"
                for rank, failure in sorted(e.failures.items())
            )
            print(
                f"error: recipe process failed: {failed}; its traceback is above "
                f"(rerun with --debug for torchrun's report)",
                file=sys.stderr,
            )
            if os.environ.get("TUNESMITH_DEBUG"):
                print(e, file=sys.stderr)
            return 1
        finally:
            os.environ.pop(_child.ERROR_DIR_ENV, None)
    return 0
