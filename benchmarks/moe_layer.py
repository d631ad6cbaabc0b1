#!/usr/bin/env python
"""MoE layer forward + backward tokens/s: ``torch._grouped_mm`` vs the per-expert loop.

One ``tunesmith.modules.moe.MoE`` (router + grouped SwiGLU experts) at a small
Qwen3-MoE-like shape, timed over ``--steps`` forward + backward passes after two warm-up
passes, for each expert path the device / dtype supports (``grouped_mm_supported``). Both
paths compute the same numbers (``tests/modules/test_moe.py``); this measures only speed.

Usage:
    PYTHONPATH=src python benchmarks/moe_layer.py [--device cpu|cuda] [--dtype fp32|bf16]
        [--tokens 2048] [--dim 512] [--hidden 256] [--experts 32] [--top-k 4] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from tunesmith.modules.moe import GroupedExperts, MoE, TopKRouter, grouped_mm_supported


def bench(args: argparse.Namespace, grouped: bool) -> float:
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    torch.manual_seed(0)
    moe = MoE(
        router=TopKRouter(args.dim, args.experts, args.top_k),
        experts=GroupedExperts(args.dim, args.hidden, args.experts, use_grouped_mm=grouped),
    ).to(device, dtype)
    x = torch.randn(1, args.tokens, args.dim, device=device, dtype=dtype, requires_grad=True)

    def step() -> None:
        moe(x).float().pow(2).mean().backward()

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.tokens * args.steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--experts", type=int, default=32)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    probe = torch.zeros(
        (),
        device=args.device,
        dtype=getattr(torch, {"fp32": "float32", "bf16": "bfloat16"}[args.dtype]),
    )
    result = {"loop_tokens_per_s": round(bench(args, False))}
    if grouped_mm_supported(probe, args.dim, args.hidden):
        result["grouped_mm_tokens_per_s"] = round(bench(args, True))
        result["speedup"] = round(
            result["grouped_mm_tokens_per_s"] / result["loop_tokens_per_s"], 2
        )
    print(json.dumps({**vars(args), **result}))


if __name__ == "__main__":
    main()
