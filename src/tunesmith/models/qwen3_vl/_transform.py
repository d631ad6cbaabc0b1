"""``qwen3_vl_transform``: Qwen3 tokenizer + Qwen3-VL's dynamic-resolution image transform.

Qwen3-VL's published ``preprocessor_config.json``: 16 px patches, 2 x 2 merge (so sizes are
multiples of 32), mean = std = 0.5, ``65536 <= h * w <= 16777216`` pixels (256^2 .. 4096^2).
Prompt format (the Qwen3-VL Instruct chat template): ChatML with no default system prompt,
each image part ``<|vision_start|><|image_pad|><|vision_end|>`` with its ``<|image_pad|>``
expanded to ``grid_h * grid_w / 4`` tokens, as ``Qwen3VLProcessor`` does. The transform is
Qwen2.5-VL's (:class:`~tunesmith.models.qwen2_5_vl.Qwen2_5_VLTransform`) with these values.

Against ``Qwen3VLProcessor.apply_chat_template`` with Qwen3's (text) template supplied, the
tokens are equal for generation prompts and for training samples but one thing: Qwen3's
template writes an empty ``<think>\n\n</think>\n\n`` at the start of the final assistant
turn; the Qwen3-VL Instruct template (a non-thinking model) does not, and neither does this
transform. Qwen3-VL *Thinking* checkpoints: write the reasoning into the answer text.
"""

from __future__ import annotations

from typing import Any

from tunesmith.models.qwen2_5_vl._transform import Qwen2_5_VLTransform
from tunesmith.models.qwen3._tokenizer import QWEN3_SPECIAL_TOKENS

__all__ = ["QWEN3_VL_IMAGE", "qwen3_vl_transform"]

#: Qwen3-VL's image settings (``DynamicResolutionImageTransform`` arguments)
QWEN3_VL_IMAGE: dict[str, Any] = {
    "patch_size": 16,
    "merge_size": 2,
    "temporal_patch_size": 2,
    "min_pixels": 65_536,
    "max_pixels": 16_777_216,
    "image_mean": (0.5, 0.5, 0.5),
    "image_std": (0.5, 0.5, 0.5),
}


def qwen3_vl_transform(
    path: str,
    merges_file: str,
    max_seq_len: int | None = None,
    min_pixels: int = QWEN3_VL_IMAGE["min_pixels"],
    max_pixels: int = QWEN3_VL_IMAGE["max_pixels"],
    special_tokens_path: str | None = None,
    prompt_template: Any = None,
) -> Qwen2_5_VLTransform:
    """Qwen3-VL's transform (16 px patches, 2 x 2 merge, mean = std = 0.5, ChatML without a
    default system prompt). ``path`` / ``merges_file``: the Qwen ``vocab.json`` /
    ``merges.txt``."""
    from tunesmith.data.tokenizers import load_special_tokens

    special = load_special_tokens(special_tokens_path) if special_tokens_path else None
    return Qwen2_5_VLTransform(
        path,
        merges_file,
        max_seq_len=max_seq_len,
        **{**QWEN3_VL_IMAGE, "min_pixels": min_pixels, "max_pixels": max_pixels},
        special_tokens=special if special is not None else QWEN3_SPECIAL_TOKENS,
        prompt_template=prompt_template,
        default_system_prompt=None,
    )
