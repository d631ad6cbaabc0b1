"""Tiny local files for vision recipe tests: a random Mllama written by transformers, a
tiktoken tokenizer whose special tokens fit it, and a VQA sample on the dog image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

TEXT_VOCAB = 2048  # tiktoken_small's 2000 ranks + specials; <|image|> is the first fusion id
IMAGE_TOKEN = TEXT_VOCAB
SPECIALS = {
    "<|begin_of_text|>": 2000,
    "<|end_of_text|>": 2001,
    "<|start_header_id|>": 2002,
    "<|end_header_id|>": 2003,
    "<|eot_id|>": 2004,
    "<|eom_id|>": 2005,
    "<|finetune_right_pad_id|>": 2006,
    "<|python_tag|>": 2007,
    "<|image|>": IMAGE_TOKEN,
}
TILE = 28
# one question, so every batch has one shape (CPU kernels pay seconds for each new shape)
QUESTIONS = [("What is presented on image?", "A dog on a skateboard.")]


def write_tiny_mllama(
    directory: Path, num_hidden_layers: int = 5, cross_attention_layers: tuple = (1, 3)
) -> Path:
    """A random ``MllamaForConditionalGeneration`` (28 px tiles, 2 x 2 tiles at most,
    3 self- + 2 cross-attention text layers by default) saved with ``save_pretrained``."""
    import transformers as t

    vision = t.MllamaVisionConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_global_layers=1,
        attention_heads=4,
        intermediate_size=64,
        vision_output_dim=32 * 3,
        image_size=TILE,
        patch_size=14,
        max_num_tiles=4,
        intermediate_layers_indices=[0, 1],
    )
    text = t.MllamaTextConfig(
        vocab_size=TEXT_VOCAB,
        hidden_size=64,
        num_hidden_layers=num_hidden_layers,
        cross_attention_layers=list(cross_attention_layers),
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
        rope_theta=500_000.0,
        pad_token_id=SPECIALS["<|finetune_right_pad_id|>"],
        bos_token_id=SPECIALS["<|begin_of_text|>"],
        eos_token_id=SPECIALS["<|end_of_text|>"],
    )
    cfg = t.MllamaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = t.MllamaForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():  # gates open too, so the image matters
            if "norm" not in name:  # norms stay 1: the logits are not near-uniform
                p.normal_(0.0, 0.1)
    model.save_pretrained(directory)
    return directory


def write_special_tokens(path: Path) -> Path:
    path.write_text(json.dumps(SPECIALS))
    return path


def write_vqa_data(path: Path, image: Path, rows: int = 40) -> Path:
    """torchtune's ``vqa_tiny.json`` layout (``input``, ``output``, ``image`` relative to an
    image folder), questions about ``image``."""
    data = [
        {"input": q, "output": a, "image": image.name}
        for q, a in (QUESTIONS[i % len(QUESTIONS)] for i in range(rows))
    ]
    path.write_text(json.dumps(data))
    return path


def vision_config(
    out: Path, model_dir: Path, data: Path, image_dir: Path, assets: Path, specials: Path
) -> dict[str, Any]:
    """Overrides of tests.recipes.conftest.base_config for the tiny Mllama."""
    return {
        "model.checkpoint_dir_or_config": str(model_dir),
        "checkpointer.checkpoint_dir": str(model_dir),
        "checkpointer.model_type": "LLAMA3_VISION",
        "tokenizer": {
            "_component_": "tunesmith.models.llama3_2_vision.Llama3VisionTransform",
            "path": str(assets / "tiktoken_small.model"),
            "special_tokens_path": str(specials),
            "tile_size": TILE,
            "patch_size": 14,
            "max_num_tiles": 4,
            "max_seq_len": 128,
        },
        "dataset": {
            "_component_": "tunesmith.datasets.multimodal.vqa_dataset",
            "source": "json",
            "data_files": str(data),
            "image_dir": str(image_dir),
            "split": "train",
            "packed": False,
        },
        "batch_size": 2,
        "optimizer.lr": 1e-2,
        "max_steps_per_epoch": 20,
        "epochs": 1,
    }
