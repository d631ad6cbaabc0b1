"""Tiny local files for Qwen2.5-VL / Qwen3-VL recipe tests: a random
``Qwen2_5_VLForConditionalGeneration`` / ``Qwen3VLForConditionalGeneration`` written by
transformers, Qwen2.5's / Qwen3's special tokens renumbered onto torchtune's tiny BPE vocabulary
(2000 ids), and the transform / finetune overrides that use them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from tunesmith.models.qwen3._tokenizer import QWEN3_SPECIAL_TOKENS

VOCAB = 2048  # tiny_bpe's 2000 ids + Qwen3's 26 special tokens (Qwen2.5's 22 first), rounded up
# Qwen2.5's specials are the first 22 of Qwen3's, so one numbering serves both families
SPECIALS = {name: 2000 + i for i, name in enumerate(QWEN3_SPECIAL_TOKENS)}
IMAGE = SPECIALS["<|image_pad|>"]
# small images: the dog becomes a 4 x 6 patch grid (6 image tokens)
MIN_PIXELS, MAX_PIXELS = 28 * 28, 28 * 28 * 6
# Qwen3-VL (16 px patches, 2 x 2 merge): a few image tokens per image too
MIN_PIXELS_3, MAX_PIXELS_3 = 32 * 32, 32 * 32 * 6


def write_tiny_qwen_vl(directory: Path) -> Path:
    """A random ``Qwen2_5_VLForConditionalGeneration`` (2 + 2 layers, width 64 / 32, window
    attention in ViT layer 0, full attention in layer 1) saved with ``save_pretrained``."""
    import transformers as t

    cfg = t.Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [2, 3, 3],
            },
            max_position_embeddings=512,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            bos_token_id=None,
            eos_token_id=SPECIALS["<|im_end|>"],
            pad_token_id=SPECIALS["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=48,
            num_heads=2,
            out_hidden_size=64,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,
            fullatt_block_indexes=[1],
        ),
        image_token_id=IMAGE,
        video_token_id=SPECIALS["<|video_pad|>"],
        vision_start_token_id=SPECIALS["<|vision_start|>"],
        vision_end_token_id=SPECIALS["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = t.Qwen2_5_VLForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # larger weights: logits far from uniform, so the image matters
        for name, p in model.named_parameters():
            if "norm" not in name and "ln_q" not in name:
                p.normal_(0.0, 0.1)
    model.save_pretrained(directory)
    return directory


def tiny_qwen3_vl_config(
    *,
    vocab_size: int = VOCAB,
    text_layers: int = 2,
    text_mlp: int = 128,
    vision_layers: int = 2,
    image_token_id: int = IMAGE,
    video_token_id: int = SPECIALS["<|video_pad|>"],
    vision_start_token_id: int = SPECIALS["<|vision_start|>"],
    vision_end_token_id: int = SPECIALS["<|vision_end|>"],
    eos_token_id: int | None = SPECIALS["<|im_end|>"],
    pad_token_id: int | None = SPECIALS["<|endoftext|>"],
    tie: bool = False,
) -> Any:
    """A tiny ``transformers.Qwen3VLConfig``: text layers of width 64 with QK-norm and
    interleaved M-RoPE (sections 2/3/3, 4 heads / 2 KV heads of 16), ViT layers of width 32
    with DeepStack taps at layers 0 and 1, a 4 x 4 learned position table interpolated to each
    grid. The defaults number the vision tokens on the renumbered tiny BPE vocabulary."""
    import transformers as t

    return t.Qwen3VLConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=text_mlp,
            num_hidden_layers=text_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 5e6,
                "mrope_section": [2, 3, 3],
                "mrope_interleaved": True,
            },
            max_position_embeddings=512,
            rms_norm_eps=1e-6,
            tie_word_embeddings=tie,
            bos_token_id=None,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        ),
        vision_config=dict(
            depth=vision_layers,
            hidden_size=32,
            intermediate_size=48,
            num_heads=2,
            out_hidden_size=64,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            num_position_embeddings=16,
            deepstack_visual_indexes=[0, 1],
        ),
        image_token_id=image_token_id,
        video_token_id=video_token_id,
        vision_start_token_id=vision_start_token_id,
        vision_end_token_id=vision_end_token_id,
        tie_word_embeddings=tie,
    )


def write_tiny_qwen3_vl(directory: Path) -> Path:
    """A random ``Qwen3VLForConditionalGeneration`` of :func:`tiny_qwen3_vl_config` (2 text
    layers, 2 ViT layers) saved with ``save_pretrained``."""
    import transformers as t

    torch.manual_seed(0)
    model = t.Qwen3VLForConditionalGeneration(tiny_qwen3_vl_config()).eval()
    with torch.no_grad():  # larger weights: logits far from uniform, so the image matters
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0.0, 0.1)
    model.save_pretrained(directory)
    return directory


def write_specials(path: Path) -> Path:
    path.write_text(json.dumps(SPECIALS))
    return path


def transform_node(
    assets: Path, specials: Path, max_seq_len: int = 128, family: str = "qwen2_5_vl"
) -> dict[str, Any]:
    """``qwen2_5_vl_transform`` / ``qwen3_vl_transform`` on the tiny BPE files (config
    ``tokenizer`` node)."""
    qwen3 = family == "qwen3_vl"
    return {
        "_component_": f"tunesmith.models.{family}.{family}_transform",
        "path": str(assets / "tiny_bpe_vocab.json"),
        "merges_file": str(assets / "tiny_bpe_merges.txt"),
        "special_tokens_path": str(specials),
        "min_pixels": MIN_PIXELS_3 if qwen3 else MIN_PIXELS,
        "max_pixels": MAX_PIXELS_3 if qwen3 else MAX_PIXELS,
        "max_seq_len": max_seq_len,
    }


def qwen_vl_config(
    model_dir: Path,
    data: Path,
    image_dir: Path,
    assets: Path,
    specials: Path,
    family: str = "qwen2_5_vl",
) -> dict[str, Any]:
    """Overrides of tests.recipes.conftest.base_config for the tiny Qwen2.5-VL / Qwen3-VL."""
    return {
        "model.checkpoint_dir_or_config": str(model_dir),
        "checkpointer.checkpoint_dir": str(model_dir),
        "checkpointer.model_type": family.upper(),
        "tokenizer": transform_node(assets, specials, family=family),
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
