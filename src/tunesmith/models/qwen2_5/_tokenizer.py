"""Qwen2.5 tokenizer: Qwen2's, with Qwen2.5's added tokens, EOS ``<|im_end|>``, the official
default system prompt and tool rendering (its family's data; the code is Qwen2's)."""

from __future__ import annotations

from tunesmith.models.qwen2._tokenizer import (
    QWEN2_SPECIAL_TOKENS,
    Qwen2Tokenizer,
    QwenTokenizerFamily,
    qwen_tokenizer_builder,
)

__all__ = [
    "QWEN2_5_SPECIAL_TOKENS",
    "QWEN2_5_DEFAULT_SYSTEM_PROMPT",
    "Qwen2_5Tokenizer",
    "qwen2_5_tokenizer",
]

QWEN2_5_SPECIAL_TOKENS: dict[str, int] = {
    **QWEN2_SPECIAL_TOKENS,
    "<|object_ref_start|>": 151646,
    "<|object_ref_end|>": 151647,
    "<|box_start|>": 151648,
    "<|box_end|>": 151649,
    "<|quad_start|>": 151650,
    "<|quad_end|>": 151651,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
    "<tool_call>": 151657,
    "</tool_call>": 151658,
    "<|fim_prefix|>": 151659,
    "<|fim_middle|>": 151660,
    "<|fim_suffix|>": 151661,
    "<|fim_pad|>": 151662,
    "<|repo_name|>": 151663,
    "<|file_sep|>": 151664,
}
QWEN2_5_DEFAULT_SYSTEM_PROMPT = (
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
)

QWEN2_5 = QwenTokenizerFamily(
    "Qwen2.5",
    QWEN2_5_SPECIAL_TOKENS,
    "<|im_end|>",
    QWEN2_5_DEFAULT_SYSTEM_PROMPT,
    tools=True,
)


class Qwen2_5Tokenizer(Qwen2Tokenizer):  # noqa: N801 - torchtune's name
    """Qwen2.5: :class:`Qwen2Tokenizer` with Qwen2.5's special tokens, EOS ``<|im_end|>``,
    the official default system prompt, and tool schemas / ``tool_calls`` / ``tool``
    results as the official template renders them (``ChatMLFormat(tools=True)``)."""

    family = QWEN2_5


qwen2_5_tokenizer = qwen_tokenizer_builder(Qwen2_5Tokenizer, "qwen2_5_tokenizer", __name__)
