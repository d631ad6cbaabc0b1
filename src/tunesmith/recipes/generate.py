"""Recipe ``generate``: chat with a model from any checkpoint tunesmith loads, streaming tokens.

Config keys (torchtune's generation config names)::

    model, tokenizer, checkpointer   components, as in the finetune configs; a LoRA output
                                     folder loads through the same checkpointer (merged weights),
                                     or point a LoRA model at an adapter with
                                     checkpointer.adapter_checkpoint
    device, dtype, seed
    prompt        "text" | {system: ..., user: ...} | a list of those (batched, left-padded);
                  with a vision model transform as tokenizer (llama3_2_vision_transform),
                  user may be {image: <path or URL>, text: ...} (one prompt at a time)
    max_new_tokens, temperature (0 = greedy), top_k, top_p, enable_kv_cache
    tensor_parallel_dim, tensor_parallel_plan
                  under torchrun (torchtune's ``dev/generate_v2_distributed``, its
                  ``*_70B_generation_distributed`` configs): the model is built on the meta
                  device, split over every process by tensor parallelism (the degree is the
                  world size) and each rank loads only its slices; every rank decodes the
                  same tokens (replicated logits, the same seeded sampler), rank 0 prints

Run: ``tunesmith run generate --config llama3_2/generation prompt.user="Hi!"``, or
``tunesmith run --nproc_per_node 8 dev/generate_v2_distributed --config
llama3_1/70B_generation_distributed``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from tunesmith.config import instantiate
from tunesmith.data import prompt_tokens
from tunesmith.generation import TextStreamer, generate, left_pad_prompts
from tunesmith.utils import get_device, get_dtype, get_logger, log_runtime, set_seed

__all__ = ["load_model", "prompt_tokens", "recipe_main"]

log = get_logger(__name__)


def load_model(
    cfg: DictConfig, device: torch.device, dtype: torch.dtype, tp_mesh: Any = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Build ``cfg.model``, load ``cfg.checkpointer``'s weights into it; returns (model, ckpt).

    Accepts a full state dict, a LoRA model's base weights plus ``"adapter"`` weights, or
    merged LoRA outputs loaded into the base model. Missing non-adapter keys are an error.
    With a ``tp_mesh`` (:func:`~tunesmith.recipes._parallel_setup.generation_mesh`) the model is
    built on the meta device, split by tensor parallelism, and each rank copies in only its
    slices of the checkpoint's tensors.
    """
    checkpointer = instantiate(cfg.checkpointer)
    ckpt = checkpointer.load_checkpoint()
    from tunesmith.training.precision import set_default_dtype

    build_on = torch.device("meta") if tp_mesh is not None else torch.device(device)
    with set_default_dtype(dtype), build_on:  # built directly in dtype on device
        model = instantiate(cfg.model)
    state = dict(ckpt["model"])
    state.update(ckpt.get("adapter") or {})
    from tunesmith.modules.peft import get_adapter_params

    adapter_names = set(get_adapter_params(model))
    expected = set(model.state_dict())
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    missing_base = [k for k in missing if k not in adapter_names]
    if missing_base or unexpected:
        raise ValueError(
            f"checkpoint does not fit the model built by model._component_="
            f"{cfg.model.get('_component_')}: missing {missing_base[:5]}, unexpected "
            f"{unexpected[:5]}. Check checkpointer.checkpoint_dir and model_type."
        )
    if missing:
        log.info("no adapter weights in the checkpoint: LoRA layers start at zero (a no-op)")
    if tp_mesh is None:
        model.load_state_dict(state, strict=False)
    else:
        from tunesmith.recipes._parallel_setup import tensor_parallel
        from tunesmith.training.meta_init import initial_adapter_weights, load_full_state_dict

        if missing:  # fresh adapters (LoRA B = 0): the same on every rank
            state.update(initial_adapter_weights(model, state, seed=0))
        tensor_parallel(model, cfg, tp_mesh)
        load_full_state_dict(model, state, device)
        log.info("tensor parallel over %d ranks: each holds 1/%d of every projection",
                 tp_mesh.size(), tp_mesh.size())  # fmt: skip
    del state
    model.eval()
    return model, ckpt


def _prompts(cfg: DictConfig) -> list[Any]:
    raw = cfg.get("prompt")
    if raw is None:
        raise ValueError("set prompt: a string, {system: ..., user: ...}, or a list of those")
    raw = OmegaConf.to_container(raw, resolve=True) if OmegaConf.is_config(raw) else raw
    return list(raw) if isinstance(raw, Sequence) and not isinstance(raw, str) else [raw]


def recipe_main(cfg: DictConfig) -> None:
    """Generate answers to ``cfg.prompt`` and print them (row 0 streams as it is produced)."""
    from tunesmith.recipes._finetune_setup import local_device
    from tunesmith.recipes._parallel_setup import generation_mesh
    from tunesmith.training.distributed import (
        destroy_distributed,
        get_world_size_and_rank,
        init_distributed,
    )

    device = get_device(cfg.get("device"))
    init_distributed(device_type=device.type)  # under torchrun: tensor parallel generation
    world_size, rank = get_world_size_and_rank()
    device = local_device(device)
    tp_mesh = generation_mesh(cfg, world_size, device)  # checked before weights load
    dtype = get_dtype(cfg.get("dtype"))
    log_runtime(device, rank)
    seed = set_seed(cfg.get("seed"))
    model, _ = load_model(cfg, device, dtype, tp_mesh)
    tokenizer = instantiate(cfg.tokenizer)

    prompts = _prompts(cfg)
    fusion: dict[str, Any] = {}
    if hasattr(tokenizer, "image_transform"):  # a vision model: images in the prompt
        if len(prompts) != 1:
            from tunesmith.config import ConfigError

            raise ConfigError(
                f"prompt: a vision model answers one prompt at a time, got {len(prompts)}: "
                "give one prompt",
                key="prompt",
            )
        from tunesmith.data._prompt import vision_prompt_batch
        from tunesmith.recipes._finetune_setup import batch_to_device

        vision = batch_to_device(vision_prompt_batch(tokenizer, prompts[0]), device)
        batch = vision.pop("tokens")
        fusion = {k: vision[k] for k in ("encoder_input", "encoder_mask") if k in vision}
    else:
        batch = left_pad_prompts([prompt_tokens(tokenizer, p) for p in prompts], tokenizer.pad_id)
    stop_tokens = list(getattr(tokenizer, "stop_tokens", None) or [tokenizer.eos_id])
    # every rank decodes the same tokens; rank 0 prints them
    streamer = TextStreamer(tokenizer, stop_tokens=stop_tokens) if rank == 0 else None
    rng = torch.Generator(device=device).manual_seed(seed)

    start = time.perf_counter()
    tokens = generate(
        model,
        batch.to(device),
        int(cfg.get("max_new_tokens", 256)),
        temperature=float(cfg.get("temperature", 0.0) or 0.0),
        top_k=cfg.get("top_k"),
        top_p=cfg.get("top_p"),
        stop_tokens=stop_tokens,
        pad_id=tokenizer.pad_id,
        rng=rng,
        use_cache=bool(cfg.get("enable_kv_cache", True)),
        on_token=streamer,
        **fusion,
    )
    elapsed = time.perf_counter() - start
    destroy_distributed()
    if rank != 0:
        return
    sys.stdout.write("\n")
    new_tokens = tokens[:, batch.shape[1] :]
    for row in range(1, len(prompts)):
        ids = [t for t in new_tokens[row].tolist() if t not in stop_tokens]
        print(f"--- prompt {row}:\n{tokenizer.decode(ids)}")
    n = int((new_tokens != tokenizer.pad_id).sum())
    log.info("generated %d tokens in %.2f s (%.1f tokens/s)", n, elapsed, n / max(elapsed, 1e-9))


if __name__ == "__main__":  # python generate.py --config ... (also under torchrun)
    from tunesmith.cli._child import script_main

    raise SystemExit(script_main(recipe_main, "generate"))
