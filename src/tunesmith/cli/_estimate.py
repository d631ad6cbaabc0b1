"""``tunesmith estimate --config X [--nproc_per_node N] [--memory GiB] [overrides]``: the
expected peak memory per device of a finetune config, simulated on the meta device."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "cmd_estimate"]


def add_parser(sub: argparse._SubParsersAction, handler: object) -> None:
    p = sub.add_parser(
        "estimate",
        help="expected peak memory per device of a finetune config (no weights loaded)",
        description=(
            "Build the config's model on the meta device and simulate two training steps of its "
            "loss and optimizer, counting every tensor (parameters, gradients, optimizer state, "
            "activations with the config's activation checkpointing/offloading, the loss's "
            "logits); with --nproc_per_node N the FSDP2 shards. With --memory, also the largest "
            "batch_size that fits."
        ),
    )
    p.add_argument("--config", required=True, help="config name or path to a .yaml file")
    p.add_argument("--nproc_per_node", "--nproc-per-node", type=int, default=1,
                   help="devices the model is sharded over (FSDP2)")  # fmt: skip
    p.add_argument("--nnodes", type=int, default=1, help="nodes (devices = nnodes x nproc)")
    p.add_argument("--memory", type=float, default=None, help="GiB per device to fit")
    p.add_argument("--seq_len", "--seq-len", type=int, default=None,
                   help="tokens per row (default: tokenizer.max_seq_len, else 2048)")  # fmt: skip
    p.add_argument("overrides", nargs="*", help="key=value to set, ~key to delete")
    p.set_defaults(func=handler)


def cmd_estimate(args: argparse.Namespace) -> int:
    from tunesmith.config import ConfigError, apply_overrides, load_config, resolve_config_path
    from tunesmith.training.memory_estimate import estimate_memory, largest_batch_size

    if args.nproc_per_node < 1 or args.nnodes < 1:
        raise ConfigError("--nproc_per_node and --nnodes must be >= 1 (command line)")
    cfg = apply_overrides(load_config(resolve_config_path(args.config)), args.overrides)
    world = args.nproc_per_node * args.nnodes
    est = estimate_memory(cfg, world_size=world, seq_len=args.seq_len)
    print(est.table())
    if args.memory is not None:
        fits = largest_batch_size(
            cfg, int(args.memory * 1024**3), world_size=world, seq_len=args.seq_len
        )
        print(f"largest batch_size that fits {args.memory:g} GiB per device: {fits}")
    return 0
