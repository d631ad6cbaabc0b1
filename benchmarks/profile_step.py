#!/usr/bin/env python
"""Profile tunesmith's training step in-process (torch.profiler), on the benchmark's data.

Builds the model the way the finetune recipe does (``build_from_hf`` + the HF weights), takes
the first batches ``run.py`` dumped for the HF loop, and runs forward + loss + backward +
AdamW. Prints the step time per phase and the top ops by self CPU time.

    .venv/bin/python benchmarks/profile_step.py --size 120m --method full --dtype fp32
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _assets import DEFAULT_WORK  # noqa: E402


def load_batches(path: Path, batch_size: int, n: int) -> list[dict[str, torch.Tensor]]:
    """The benchmark's samples collated the way the recipe collates them."""
    from tunesmith.data import padded_collate_packed, padded_collate_sft

    blob = json.loads(path.read_text())
    out = []
    for i in range(n):
        chunk = blob["samples"][i * batch_size : (i + 1) * batch_size]
        if blob["packed"]:
            out.append(padded_collate_packed(chunk))
        else:
            out.append(padded_collate_sft(chunk, padding_idx=blob["pad_id"], ignore_idx=-100))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--size", default="15m")
    ap.add_argument("--method", default="full", choices=["full", "lora"])
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--packed", action="store_true")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rows", type=int, default=20, help="profiler table rows")
    ap.add_argument("--fused", action="store_true", help="fused AdamW")
    ap.add_argument("--padded", action="store_true", help="do not unpad the batches")
    ap.add_argument("--shapes", action="store_true", help="group ops by input shape")
    args = ap.parse_args()

    from safetensors.torch import load_file

    from tunesmith.models import build_from_hf
    from tunesmith.models.convert_weights import hf_to_native
    from tunesmith.modules.loss import LinearCrossEntropyLoss
    from tunesmith.modules.peft import get_adapter_params, set_trainable_params
    from tunesmith.training.precision import set_default_dtype

    model_dir = args.work / "models" / args.size
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    lora = {}
    if args.method == "lora":
        tied = json.loads((model_dir / "config.json").read_text())["tie_word_embeddings"]
        lora = dict(lora_attn_modules=["q_proj", "v_proj"], apply_lora_to_output=not tied)
    with set_default_dtype(dtype):
        model = build_from_hf(str(model_dir), **lora)
    sd = hf_to_native(load_file(str(model_dir / "model.safetensors")), "LLAMA3")
    model.load_state_dict(sd, strict=False)
    if lora:
        set_trainable_params(model, get_adapter_params(model))
    loss_fn = LinearCrossEntropyLoss()
    loss_fn.set_model_output(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-5, weight_decay=0.01, fused=args.fused or None)
    kind = "packed" if args.packed else "unpacked"
    batches = load_batches(args.work / "data" / f"samples-{kind}-512.json", 4, args.steps + 1)

    try:  # the recipe's own batch preparation (unpadded rows when the recipe does it)
        from tunesmith.recipes._unpad import batch_inputs as _to_device

        def prepare(batch: dict[str, torch.Tensor]) -> tuple[dict, torch.Tensor]:
            return _to_device(batch, torch.device("cpu"), -100, unpad=not args.padded)
    except ImportError:

        def prepare(batch: dict[str, torch.Tensor]) -> tuple[dict, torch.Tensor]:
            labels = batch["labels"]
            pad = torch.full_like(labels[:, :1], -100)
            return dict(batch), torch.cat([labels[:, 1:], pad], dim=1)

    def step(batch: dict[str, torch.Tensor]) -> tuple[float, float, float, float]:
        t0 = time.perf_counter()
        inputs, labels = prepare(batch)
        docs = {"seq_lens": inputs["seq_lens"]} if "seq_lens" in inputs else {}
        h = model(
            inputs["tokens"], mask=inputs.get("mask"), input_pos=inputs.get("input_pos"), **docs
        )
        t1 = time.perf_counter()
        loss = loss_fn(h, labels)
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, t4 - t3

    model.train()
    step(batches[0])  # warm-up
    times = []
    cpu0 = time.process_time()
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=args.shapes
    ) as prof:
        for b in batches[1:]:
            times.append(step(b))
    cpu = time.process_time() - cpu0
    ntok = sum(int((b["labels"] != -100).sum()) for b in batches[1:])
    total = sum(sum(t) for t in times)
    phases = [sum(t[i] for t in times) for i in range(4)]
    print(
        f"{args.size} {args.method} {args.dtype} {kind}: {ntok / total:.0f} tok/s, "
        f"{ntok / cpu:.0f} tok/cpu-s (profiled); "
        f"forward {phases[0]:.2f}s loss {phases[1]:.2f}s backward {phases[2]:.2f}s "
        f"optimizer {phases[3]:.2f}s"
    )
    averages = prof.key_averages(group_by_input_shape=args.shapes)
    print(averages.table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
