"""Qwen3 tokenizer: Qwen2.5's tokens plus tool-response and think tokens, Qwen3's template
(its family's data; the code is Qwen2's)."""

from __future__ import annotations

from tunesmith.models.qwen2._tokenizer import (
    Qwen2Tokenizer,
    QwenTokenizerFamily,
    qwen_tokenizer_builder,
)
from tunesmith.models.qwen2_5._tokenizer import QWEN2_5_SPECIAL_TOKENS

__all__ = ["QWEN3_SPECIAL_TOKENS", "Qwen3Tokenizer", "qwen3_tokenizer"]

QWEN3_SPECIAL_TOKENS: dict[str, int] = {
    **QWEN2_5_SPECIAL_TOKENS,
    "<tool_response>": 151665,
    "</tool_response>": 151666,
    "<think>": 151667,
    "</think>": 151668,
}

QWEN3 = QwenTokenizerFamily(
    "Qwen3", QWEN3_SPECIAL_TOKENS, "<|im_end|>", None, tools=True, thinking=True
)


class Qwen3Tokenizer(Qwen2Tokenizer):
    """Qwen3: ChatML without a default system prompt; the final assistant turn (after the
    last user query) carries ``<think>\\n...\\n</think>\\n\\n`` as the official template renders
    it (empty when the content has no reasoning). EOS ``<|im_end|>``.
    ``enable_thinking=False`` is the template's non-thinking switch: the generation prompt
    ends with an empty ``<think>\\n\\n</think>\\n\\n``. Tools, ``tool_calls``, ``tool`` results
    and ``reasoning`` are rendered as the official template does (``Qwen3ChatFormat``)."""

    family = QWEN3


qwen3_tokenizer = qwen_tokenizer_builder(Qwen3Tokenizer, "qwen3_tokenizer", __name__)
