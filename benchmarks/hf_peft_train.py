#!/usr/bin/env python
"""Peer baseline: a plain PyTorch loop over a transformers Llama (+ PEFT LoRA), CPU.

Runs in the peer venv (never imports tunesmith). Reads the samples tunesmith's data
pipeline produced (``run.py`` dumps them), in order, so it trains on exactly the batches
the other systems see: unpacked batches are right-padded to their longest sample; packed
batches carry per-document position ids and a block-causal mask. One line per step:

    STEP <n> loss=<mean CE over trained tokens> tokens=<trained tokens> tps=<tokens/s>
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch


def batch_unpacked(samples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sample: ``input_ids``/``labels`` ``[b, s]``."""
    b, s = len(samples), max(len(x["tokens"]) for x in samples)
    ids = torch.full((b, s), pad_id, dtype=torch.long)
    labels = torch.full((b, s), -100, dtype=torch.long)
    for r, x in enumerate(samples):
        ids[r, : len(x["tokens"])] = torch.tensor(x["tokens"])
        labels[r, : len(x["labels"])] = torch.tensor(x["labels"])
    return {"input_ids": ids, "labels": labels}


def batch_packed(samples: list[dict], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Packs of equal length: position ids restart per document, additive block-causal mask
    ``[b, 1, s, s]`` (padding rows attend to themselves so softmax stays finite)."""
    ids = torch.tensor([x["tokens"] for x in samples])
    labels = torch.tensor([x["labels"] for x in samples])
    pos = torch.tensor([x["input_pos"] for x in samples])
    doc = torch.tensor([x["document_ids"] for x in samples])
    s = ids.shape[1]
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    allowed = (doc[:, :, None] == doc[:, None, :]) & causal
    allowed |= torch.eye(s, dtype=torch.bool)
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return {
        "input_ids": ids,
        "labels": labels,
        "position_ids": pos,
        "attention_mask": mask[:, None],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--data", required=True, help="JSON written by run.py (samples in order)")
    ap.add_argument("--method", choices=["full", "lora"], required=True)
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lora-output", action="store_true", help="LoRA on lm_head too")
    ap.add_argument("--full-lr", type=float, default=2e-5)
    ap.add_argument("--lora-lr", type=float, default=3e-4)
    a = ap.parse_args()

    torch.manual_seed(0)
    from transformers import LlamaForCausalLM

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    model = LlamaForCausalLM.from_pretrained(a.model_dir, dtype=dtype, attn_implementation="sdpa")
    model.config.use_cache = False
    if a.method == "lora":
        from peft import LoraConfig, get_peft_model

        targets = ["q_proj", "v_proj"] + (["lm_head"] if a.lora_output else [])
        config = LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.0, target_modules=targets, bias="none"
        )
        model = get_peft_model(model, config)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    lr = a.full_lr if a.method == "full" else a.lora_lr
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = None
    if a.method == "lora":  # cosine to 0 over the run, no warm-up (torchtune's schedule)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, a.steps) / a.steps))
        )
    blob = json.load(open(a.data))
    samples, packed, pad_id = blob["samples"], blob["packed"], blob["pad_id"]
    print(
        f"INFO params={sum(p.numel() for p in model.parameters())} "
        f"trainable={sum(p.numel() for p in params)} threads={torch.get_num_threads()}",
        flush=True,
    )
    start = time.perf_counter()
    for step in range(1, a.steps + 1):
        chunk = samples[(step - 1) * a.batch_size : step * a.batch_size]
        if len(chunk) < a.batch_size:
            break
        batch = batch_packed(chunk, dtype) if packed else batch_unpacked(chunk, pad_id)
        tokens = int((batch["labels"][:, 1:] != -100).sum())
        out = model(**batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if sched is not None:
            sched.step()
        loss = out.loss.item()
        dt = time.perf_counter() - start
        print(f"STEP {step} loss={loss:.6f} tokens={tokens} tps={tokens / dt:.3f}", flush=True)
        start = time.perf_counter()


if __name__ == "__main__":
    main()
