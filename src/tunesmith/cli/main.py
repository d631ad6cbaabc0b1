"""The ``tunesmith`` command: ls, cp, cat, run, validate, download, upload, estimate,
consolidate.

Only argparse is imported to show help; each subcommand imports what it needs when it
runs, so ``tunesmith --help``, ``ls``, ``cp`` and ``cat`` never import torch.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

__all__ = ["DEBUG_ENV", "UsageParser", "build_parser", "debug_enabled", "main", "report_error"]

DEBUG_ENV = "TUNESMITH_DEBUG"
"""Set to 1 (or pass ``--debug``) to see the traceback behind a user error too."""

_DESCRIPTION = """\
tunesmith: PyTorch-native post-training for LLMs (reads torchtune configs unchanged).

examples:
  tunesmith ls
  tunesmith cp llama3_2/1B_lora_single_device ./my_config.yaml
  tunesmith run finetune --config ./my_config.yaml optimizer.lr=1e-4 ~compile
  tunesmith run --nproc_per_node 2 finetune --config llama3_2/1B_full
  tunesmith validate ./my_config.yaml
  tunesmith download Qwen/Qwen2.5-0.5B-Instruct --output-dir /tmp/Qwen2.5-0.5B-Instruct
  tunesmith upload /tmp/my_run/epoch_1 my-user/my-model --private
  tunesmith estimate --config llama3_2/1B_full --nproc_per_node 8 --memory 80
  tunesmith consolidate ./out/distributed/step_200 --output_dir ./out_hf

A mistake in the input is one line `error: <what> (<where>): <what to do>` and exit code 2;
--debug (anywhere on the command line) or TUNESMITH_DEBUG=1 also prints its traceback.
"""


class UsageParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one ``error: ...`` line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(
            f"error: {message} ({self.prog}): see `{self.prog} --help` for the usage",
            file=sys.stderr,
        )
        raise SystemExit(2)


def debug_enabled() -> bool:
    """True when tracebacks of user errors are wanted (``--debug`` or ``TUNESMITH_DEBUG=1``)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def report_error(error: BaseException) -> int:
    """Print a user error as one ``error: ...`` line (with its traceback in debug mode); 2."""
    from tunesmith.config._errors import one_line

    if debug_enabled():
        import traceback

        traceback.print_exception(error)
    _close_progress_bars()
    print(f"error: {one_line(error)}", file=sys.stderr)
    return 2


def _close_progress_bars() -> None:
    """End open tqdm bars (a failure mid-training, e.g. a full disk at a save) so the error
    starts its own line instead of trailing the bar."""
    tqdm_module = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm_module, "tqdm", None), "_instances", ()) or ()):
        bar.close()


_RUN_USAGE = "tunesmith run [torchrun options] <recipe> --config <name|path> [key=value ...]"


def _handler(module: str, function: str) -> Callable[[argparse.Namespace], int]:
    def call(args: argparse.Namespace) -> int:
        import importlib

        return importlib.import_module(module).__dict__[function](args)

    return call


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser; ``run`` is parsed by ``tunesmith.cli._run`` (it adds torchrun flags)."""
    parser = UsageParser(
        prog="tunesmith",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument(
        "--debug",
        action="store_true",
        help=f"show tracebacks of user errors too (or {DEBUG_ENV}=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=UsageParser)

    ls = sub.add_parser("ls", help="list recipes, their torchtune aliases and bundled configs")
    ls.set_defaults(func=_handler("tunesmith.cli._files", "cmd_ls"))

    cp = sub.add_parser(
        "cp",
        help="copy a bundled recipe or config to a local path",
        description="Copy a bundled recipe file or config to a local path to edit it.",
    )
    cp.add_argument(
        "source", help="recipe name/alias (e.g. finetune) or config name (e.g. llama3_2/1B_lora)"
    )
    cp.add_argument(
        "destination", help="file or folder; a config copied to a path without a suffix gets .yaml"
    )
    cp.add_argument("--force", "-f", action="store_true", help="overwrite an existing file")
    cp.add_argument(
        "--make-parents", "-p", action="store_true", help="create missing parent folders"
    )
    cp.set_defaults(func=_handler("tunesmith.cli._files", "cmd_cp"))

    cat = sub.add_parser(
        "cat",
        help="print a config, optionally with overrides applied",
        description="Print a bundled config (or a config file). With overrides, print the result.",
    )
    cat.add_argument("config", help="config name (see `tunesmith ls`) or path to a .yaml file")
    cat.add_argument("overrides", nargs="*", help="key=value to set, ~key to delete")
    cat.set_defaults(func=_handler("tunesmith.cli._files", "cmd_cat"))

    sub.add_parser(
        "run",
        help="run a recipe with a config (single process, or torchrun with launch flags)",
        usage=_RUN_USAGE,
        add_help=False,
    )

    validate = sub.add_parser(
        "validate",
        help="check a config: components resolve and their arguments bind",
        description=(
            "Load a config, apply overrides, and check that every _component_ resolves and that "
            "its keys bind to the callable's signature, that every top-level key is one the "
            "recipe reads and that numbers are in range, without building anything. Every problem "
            "is reported with its key path; the exit code is 2 when there is one."
        ),
    )
    validate.add_argument("config", help="config name or path to a .yaml file")
    validate.add_argument(
        "--recipe",
        help="the recipe the config is for (default: its '# recipe: <name>' first line); "
        "top-level keys the recipe does not read are errors",
    )
    validate.add_argument("overrides", nargs="*", help="key=value to set, ~key to delete")
    validate.set_defaults(func=_handler("tunesmith.cli._validate", "cmd_validate"))

    download = sub.add_parser(
        "download",
        help="download a model from the Hugging Face Hub",
        description="Download a model repository from the Hugging Face Hub (huggingface_hub).",
    )
    download.add_argument("repo_id", help="repository id, e.g. meta-llama/Llama-3.2-1B-Instruct")
    download.add_argument(
        "--output-dir",
        help="folder for the files (default: /tmp/<model name>, as torchtune configs expect)",
    )
    download.add_argument(
        "--ignore-patterns",
        nargs="+",
        action="extend",
        metavar="GLOB",
        help="skip files matching these globs",
    )
    download.add_argument(
        "--allow-patterns",
        nargs="+",
        action="extend",
        metavar="GLOB",
        help="only fetch files matching these globs",
    )
    download.add_argument(
        "--hf-token", help="Hugging Face token for gated/private repos (default: $HF_TOKEN)"
    )
    download.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    download.add_argument("--source", choices=["hf"], default="hf", help="where to download from")
    download.set_defaults(func=_handler("tunesmith.cli._download", "cmd_download"))

    from tunesmith.cli._upload import add_upload_parser

    add_upload_parser(sub)
    from tunesmith.cli import _consolidate, _estimate, _verify_export

    _consolidate.add_parser(sub, _handler("tunesmith.cli._consolidate", "cmd_consolidate"))
    _estimate.add_parser(sub, _handler("tunesmith.cli._estimate", "cmd_estimate"))
    _verify_export.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tunesmith`` command; returns the process exit code.

    A user error (``tunesmith.config.UserError``: config, data, files, missing extra) is one
    ``error: ...`` line on stderr and exit code 2; anything else is a bug and raises.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args_list:
        args_list = [a for a in args_list if a != "--debug"]
        os.environ[DEBUG_ENV] = "1"  # torchrun children inherit it
    from tunesmith.cli._noise import quiet_third_party
    from tunesmith.config._errors import UserError

    quiet_third_party()
    try:
        return _dispatch(args_list)
    except UserError as e:
        return report_error(e)
    except KeyboardInterrupt:
        return 130


def _dispatch(args_list: list[str]) -> int:
    if args_list and args_list[0] == "run":
        from tunesmith.cli._run import run_command

        return run_command(args_list[1:])
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.version:
        from tunesmith import __version__

        print(f"tunesmith {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 1
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
