"""A tiny random ``MllamaForConditionalGeneration`` written by transformers (save_pretrained)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

transformers = __import__("pytest").importorskip("transformers")

VOCAB = 160
IMAGE_TOKEN = VOCAB  # the first fusion token, as in Llama 3.2 Vision (128256)
_LLAMA31_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}


def tiny_config():
    """4 self-attention + 2 cross-attention text layers, a 3 + 2 layer ViT on 28 px tiles."""
    t = transformers
    vision = t.MllamaVisionConfig(
        hidden_size=32,
        num_hidden_layers=3,
        num_global_layers=2,
        attention_heads=4,
        intermediate_size=64,
        vision_output_dim=32 * 3,
        image_size=28,
        patch_size=14,
        max_num_tiles=4,
        intermediate_layers_indices=[0, 2],
    )
    text = t.MllamaTextConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=6,
        cross_attention_layers=[1, 4],
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=96,
        max_position_embeddings=256,
        rope_scaling=_LLAMA31_ROPE,
        rope_theta=500_000.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return t.MllamaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN)


def make_checkpoint(directory: Path, std: float = 0.1):
    """Write the random model to ``directory``; return it (eval, fp32, eager attention)."""
    cfg = tiny_config()
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.MllamaForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    model.save_pretrained(directory)
    return model


def read_checkpoint(directory: Path) -> tuple[dict, dict]:
    """(config.json dict, state dict) exactly as written to disk."""
    from safetensors.torch import load_file

    config = json.loads((directory / "config.json").read_text())
    return config, load_file(str(directory / "model.safetensors"))
