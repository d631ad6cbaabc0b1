#!/usr/bin/env python
"""Longest sequence that trains per device, with and without context parallelism (CPU, gloo).

For ``cp = 1`` (one process, the recipe's plain causal SDPA) and ``cp = --cp`` (that many gloo
processes, ``training.context_parallel``) with each of ``--methods`` (``allgather``: zigzag
shards, all-gathered keys/values and mask rows; ``ulysses``: consecutive shards, heads
exchanged for tokens around causal SDPA, ``training.ulysses``), one training step (forward, tunesmith's chunked linear-cross-entropy loss, backward, AdamW) of a
random decoder on one row of ``S`` tokens, for ``S`` growing by ``--growth`` from ``--start``
until a step needs more than ``--budget-mib`` of memory per process. Memory = peak RSS
(``getrusage``) minus the RSS before the first step, the maximum over the ranks; RSS only
grows, and a longer sequence needs more, so one process walks all lengths. Prints one JSON
line per (cp, method, S) and a summary line with the longest ``S`` under the budget for each.

Usage:
    PYTHONPATH=src python benchmarks/context_parallel_memory.py [--cp 2] [--budget-mib 768]
        [--methods allgather,ulysses]
        [--start 2048] [--growth 1.25] [--max-len 65536] [--layers 4] [--dim 256] [--heads 8]
        [--kv-heads 2] [--vocab 8192] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tunesmith.models.builder import build_decoder
from tunesmith.models.spec import ModelSpec
from tunesmith.modules.loss import LinearCrossEntropyLoss
from tunesmith.training.context_parallel import ContextParallel, enable_context_parallel


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _lengths(args: argparse.Namespace, multiple: int) -> list[int]:
    out, s = [], float(args.start)
    while s <= args.max_len:
        out.append(int(s) // multiple * multiple)
        s *= args.growth
    return out


def _worker(
    rank: int, world: int, method: str, port: int, args: argparse.Namespace, out: str
) -> None:
    torch.set_num_threads(args.threads)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    spec = ModelSpec(
        family="LLAMA3", vocab_size=args.vocab, num_layers=args.layers, num_heads=args.heads,
        num_kv_heads=args.kv_heads, embed_dim=args.dim, intermediate_dim=4 * args.dim,
        max_seq_len=args.max_len * 2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_decoder(spec)
    loss_fn = LinearCrossEntropyLoss()
    loss_fn.set_model_output(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    cp = ContextParallel(dist.group.WORLD, world, rank, method=method) if world > 1 else None
    if cp is not None:
        enable_context_parallel(model, cp)

    def step(seq: int) -> float:
        tokens = torch.randint(
            0, args.vocab, (1, seq), generator=torch.Generator().manual_seed(seq)
        )
        targets = torch.roll(tokens, -1, dims=1)
        inputs: dict = {"tokens": tokens}
        if cp is not None:
            inputs, targets = cp.shard(inputs, targets)
        hidden = model(inputs.pop("tokens"), **inputs)
        loss = loss_fn(hidden, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    step(4 * world)  # warm up: optimizer state, thread pools, gloo buffers
    base = _rss_mib()
    rows = []
    for seq in _lengths(args, 2 * world):
        loss = step(seq)
        peak = torch.tensor(_rss_mib() - base)
        if world > 1:
            dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        rows.append({"cp": world, "method": method, "seq_len": seq,
                     "peak_mib": round(float(peak), 1), "rank0_loss": round(loss, 4)})  # fmt: skip
        if float(peak) > args.budget_mib:
            break
    if rank == 0:
        Path(out, f"cp{world}_{method}.json").write_text(json.dumps(rows))
    if world > 1:
        dist.destroy_process_group()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cp", type=int, default=2)
    parser.add_argument("--budget-mib", type=float, default=768)
    parser.add_argument("--start", type=int, default=2048)
    parser.add_argument("--growth", type=float, default=1.25)
    parser.add_argument("--max-len", type=int, default=65536)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--methods", default="allgather,ulysses",
                        help="comma-separated context-parallel methods run at --cp")  # fmt: skip
    args = parser.parse_args()
    summary = {"budget_mib": args.budget_mib}
    with tempfile.TemporaryDirectory() as out:
        runs = [(1, "none")] + [(args.cp, m) for m in args.methods.split(",")]
        for world, method in runs:
            mp.start_processes(_worker, args=(world, method, _port(), args, out), nprocs=world,
                               start_method="spawn")  # fmt: skip
            rows = json.loads(Path(out, f"cp{world}_{method}.json").read_text())
            for row in rows:
                print(json.dumps(row), flush=True)
            fits = [r["seq_len"] for r in rows if r["peak_mib"] <= args.budget_mib]
            name = "cp1" if world == 1 else f"cp{world}_{method}"
            summary[f"longest_seq_{name}"] = max(fits, default=0)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
