"""``tunesmith consolidate <dcp_dir> --output_dir X [--format hf]``: write a sharded (DCP)
intermediate checkpoint in the run's weight format, on one process, without training."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "cmd_consolidate"]


def add_parser(sub: argparse._SubParsersAction, handler: object) -> None:
    p = sub.add_parser(
        "consolidate",
        help="write a sharded (DCP) checkpoint in the run's format (e.g. Hugging Face)",
        description=(
            "Read a DCP checkpoint folder a run wrote with intermediate_checkpoint_format=dcp or "
            "enable_async_checkpointing=True (<output_dir>/distributed/step_N, or the run's "
            "output_dir for its newest) and write its weights in the run's checkpointer format "
            "into <output_dir>/step_N (LoRA: merged weights plus the PEFT adapter)."
        ),
    )
    p.add_argument("dcp_dir", help="a DCP checkpoint folder, or a run's output_dir")
    p.add_argument("--output_dir", "--output-dir", required=True, help="where to write")
    p.add_argument(
        "--format",
        choices=["hf", "meta", "torchtune"],
        default=None,
        help="must be the run's checkpointer format (default: it)",
    )
    p.set_defaults(func=handler)


def cmd_consolidate(args: argparse.Namespace) -> int:
    from tunesmith.training.checkpointing import consolidate_dcp_checkpoint

    folder = consolidate_dcp_checkpoint(args.dcp_dir, args.output_dir, format=args.format)
    print(f"wrote {folder}")
    return 0
