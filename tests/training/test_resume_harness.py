"""A small but complete training loop used by the resume and crash tests.

It exercises everything exact resume needs: HF checkpointer, AdamW, a warmup+cosine
LambdaLR, a shuffling StatefulDistributedSampler across epochs, and randomness from
Python, NumPy and torch inside every step (plus LoRA dropout). Run as a script it
trains and saves a step checkpoint after every step (the crash test SIGKILLs it).
"""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from tunesmith.data import StatefulDistributedSampler
from tunesmith.models.builder import build_decoder, lora_settings
from tunesmith.models.convert_weights import native_to_hf, spec_from_hf_config
from tunesmith.modules.peft import get_adapter_params, set_trainable_params
from tunesmith.training import (
    FullModelHFCheckpointer,
    GracefulShutdown,
    build_recipe_state,
    restore_recipe_state,
)

HF_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "torch_dtype": "float32",
}
NUM_SAMPLES, SEQ_LEN, BATCH = 24, 12, 4  # 6 steps per epoch
LORA = {"r": 4, "lora_alpha": 8.0}


def make_base_checkpoint(folder: Path) -> Path:
    """A random tiny Llama written as an HF folder (config.json + model.safetensors)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_decoder(spec_from_hf_config(HF_CONFIG))
    hf = native_to_hf(model.state_dict(), "LLAMA3", HF_CONFIG)
    save_file({k: v.contiguous() for k, v in hf.items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(HF_CONFIG))
    return folder


def _dataset() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    return [
        torch.randint(0, HF_CONFIG["vocab_size"], (SEQ_LEN,), generator=g)
        for _ in range(NUM_SAMPLES)
    ]


def train(
    base: Path,
    output_dir: Path,
    total_steps: int,
    *,
    lora: bool = False,
    resume: bool = False,
    stop_after: int | None = None,
    save_every: int | None = None,
    keep_last_n: int | None = None,
    shutdown: GracefulShutdown | None = None,
    progress_file: Path | None = None,
) -> list[float]:
    """Train until ``total_steps`` (global); returns the losses of the steps run here.

    ``stop_after``: save an intermediate checkpoint after that step and return.
    ``save_every``: save an intermediate checkpoint every n steps (crash test).
    ``shutdown``: when it reports a signal at a step boundary, save and exit 0.
    ``progress_file``: the global step is written there after every step.
    """
    # Deliberately different seeds on resume: everything must come from the checkpoint.
    seed = 99 if resume else 7
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    ckpt = FullModelHFCheckpointer(
        base,
        ["model.safetensors"],
        "LLAMA3",
        output_dir,
        resume_from_checkpoint=resume,
        keep_last_n_checkpoints=keep_last_n,
    )
    state = ckpt.load_checkpoint()
    spec = spec_from_hf_config(HF_CONFIG)
    torch.manual_seed(0)
    if lora:
        settings = lora_settings(
            ["q_proj", "v_proj"],
            apply_lora_to_mlp=True,
            lora_rank=LORA["r"],
            lora_alpha=LORA["lora_alpha"],
            lora_dropout=0.1,
        )
        model = build_decoder(spec, settings)
        model.load_state_dict(state["model"], strict=False)
        if "adapter" in state:
            missing, unexpected = model.load_state_dict(state["adapter"], strict=False)
            assert not unexpected, unexpected
        set_trainable_params(model, get_adapter_params(model))
    else:
        model = build_decoder(spec)
        model.load_state_dict(state["model"], strict=True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.01)
    warmup, total = 3, 12

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    data = _dataset()
    sampler = StatefulDistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=5)
    # A dedicated generator: otherwise every new DataLoader iterator draws its base seed
    # from the global torch RNG, which a resumed run would draw at a different moment.
    loader = DataLoader(
        data,
        batch_size=BATCH,
        sampler=sampler,
        collate_fn=torch.stack,
        generator=torch.Generator().manual_seed(0),
    )
    epochs_run, steps = 0, 0
    if resume:
        epochs_run, steps = restore_recipe_state(
            state,
            optimizer=opt,
            lr_scheduler=sched,
            sampler=sampler,
            generators={"dataloader": loader.generator},
        )
    losses: list[float] = []
    n_epochs = math.ceil(total_steps / (NUM_SAMPLES // BATCH)) + 1
    for epoch in range(epochs_run, n_epochs):
        sampler.set_epoch(epoch)
        for batch in loader:
            # randomness from every library the recipe state must restore
            keep = torch.rand(batch.shape) > 0.1 * random.random() + float(np.random.rand()) * 0.05
            tokens = torch.where(keep, batch, torch.zeros_like(batch))
            model.train()
            logits = model(tokens[:, :-1])
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
            )
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            steps += 1
            losses.append(loss.item())
            if progress_file is not None:
                progress_file.write_text(str(steps))
            stop_now = shutdown is not None and shutdown.requested
            if (
                stop_now
                or (stop_after is not None and steps == stop_after)
                or (save_every is not None and steps % save_every == 0)
            ):
                sd: dict[str, Any] = {"model": model.state_dict()}
                if lora:
                    sd["adapter_config"] = dict(LORA)
                sd.update(
                    build_recipe_state(
                        epochs_run=epoch,
                        steps_run=steps,
                        optimizer=opt,
                        lr_scheduler=sched,
                        sampler=sampler,
                        seed=seed,
                        generators={"dataloader": loader.generator},
                    )
                )
                ckpt.save_checkpoint(sd, epoch=epoch, intermediate_checkpoint=True, step=steps)
                if stop_now:
                    shutdown.exit(0)
                if stop_after is not None:
                    return losses
            if steps >= total_steps:
                return losses
    return losses


if __name__ == "__main__":
    # python test_resume_harness.py BASE OUT TOTAL_STEPS LORA(0/1) RESUME(0/1) LOSSES_JSON [MODE]
    # MODE "every" (default): save every step, keep 2.  MODE "graceful": save only when
    # SIGTERM/SIGINT arrives, then exit 0 (the step count goes to LOSSES_JSON's .progress).
    base_dir, out_dir, n, use_lora, do_resume, losses_path = sys.argv[1:7]
    mode = sys.argv[7] if len(sys.argv) > 7 else "every"
    kwargs: dict[str, Any] = {"lora": use_lora == "1", "resume": do_resume == "1"}
    if mode == "graceful":
        with GracefulShutdown() as handler:
            result = train(
                Path(base_dir),
                Path(out_dir),
                int(n),
                shutdown=handler,
                progress_file=Path(losses_path).with_suffix(".progress"),
                **kwargs,
            )
    else:
        result = train(Path(base_dir), Path(out_dir), int(n), save_every=1, keep_last_n=2, **kwargs)
    Path(losses_path).write_text(json.dumps(result))
