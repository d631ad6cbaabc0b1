"""A tiny random transformers ``Llama4ForConditionalGeneration`` (text MoE decoder with
chunked attention, NoPE layers and QK-norm, plus the vision encoder) and Llama 4 special
tokens that fit ``tiktoken_small.model``'s 2000 ranks, for model and recipe tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

TEXT_VOCAB = 2048
_NAMES = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|header_start|>",
    "<|header_end|>",
    "<|eom|>",
    "<|eot|>",
    "<|step|>",
    "<|finetune_right_pad|>",
    "<|image_start|>",
    "<|image_end|>",
    "<|tile_x_separator|>",
    "<|tile_y_separator|>",
    "<|image|>",
    "<|patch|>",
)
SPECIALS = {name: 2000 + i for i, name in enumerate(_NAMES)}
PATCH_TOKEN = SPECIALS["<|patch|>"]
TILE = 56  # 4 x 4 patches of 14 px -> 4 decoder tokens per tile after pixel shuffle


def tiny_llama4_config(num_hidden_layers: int = 4):
    """The config of :func:`write_tiny_llama4` (every feature of the released text config:
    MoE every 2nd layer with a shared expert, NoPE every 4th, chunked attention, QK-norm,
    temperature tuning; the vision tower 2 layers of width 32, 56 px tiles)."""
    import transformers as t

    text = t.Llama4TextConfig(
        vocab_size=TEXT_VOCAB,
        hidden_size=64,
        intermediate_size=32,
        intermediate_size_mlp=96,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_local_experts=4,
        num_experts_per_tok=1,
        interleave_moe_layer_step=2,
        no_rope_layers=[int((i + 1) % 4 != 0) for i in range(num_hidden_layers)],
        attention_chunk_size=8,
        floor_scale=4,
        attn_scale=0.1,
        max_position_embeddings=512,
        pad_token_id=SPECIALS["<|finetune_right_pad|>"],
        bos_token_id=SPECIALS["<|begin_of_text|>"],
        eos_token_id=SPECIALS["<|end_of_text|>"],
    )
    vision = t.Llama4VisionConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=TILE,
        patch_size=14,
        vision_output_dim=48,
        projector_input_dim=48,
        projector_output_dim=48,
    )
    return t.Llama4Config(
        vision_config=vision,
        text_config=text,
        image_token_index=PATCH_TOKEN,
        boi_token_index=SPECIALS["<|image_start|>"],
        eoi_token_index=SPECIALS["<|image_end|>"],
    )


def write_tiny_llama4(directory: Path, std: float = 0.1) -> Path:
    """Save a random tiny ``Llama4ForConditionalGeneration`` with ``save_pretrained``."""
    import transformers as t

    cfg = tiny_llama4_config()
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = t.Llama4ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:  # norms stay 1: the logits are not near-uniform
                p.normal_(0.0, std)
    model.save_pretrained(directory)
    return directory


def write_special_tokens(path: Path) -> Path:
    path.write_text(json.dumps(SPECIALS))
    return path
