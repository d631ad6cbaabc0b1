"""Qwen3 tokenizer: Qwen2.5's BPE and tokens plus tool-response and think tokens."""

from __future__ import annotations

from typing import Any

from tunesmith.data.tokenizers import Qwen3ChatFormat, load_special_tokens
from tunesmith.models.qwen2._tokenizer import Qwen2Tokenizer
from tunesmith.models.qwen2_5._tokenizer import QWEN2_5_SPECIAL_TOKENS

__all__ = ["QWEN3_SPECIAL_TOKENS", "Qwen3Tokenizer", "qwen3_tokenizer"]

QWEN3_SPECIAL_TOKENS: dict[str, int] = {
    **QWEN2_5_SPECIAL_TOKENS,
    "<tool_response>": 151665,
    "</tool_response>": 151666,
    "<think>": 151667,
    "</think>": 151668,
}


class Qwen3Tokenizer(Qwen2Tokenizer):
    """Qwen3: ChatML without a default system prompt; the final assistant turn (after the
    last user query) carries ``<think>\\n...\\n</think>\\n\\n`` as the official template renders
    it (empty when the content has no reasoning). EOS ``<|im_end|>``.
    ``enable_thinking=False`` is the template's non-thinking switch: the generation prompt
    ends with an empty ``<think>\\n\\n</think>\\n\\n``. Tools, ``tool_calls``, ``tool`` results
    and ``reasoning`` are rendered as the official template does (``Qwen3ChatFormat``)."""

    def __init__(
        self,
        path: str,
        merges_file: str,
        special_tokens: dict[str, int] | None = None,
        max_seq_len: int | None = None,
        *,
        prompt_template: Any = None,
        eos_token: str = "<|im_end|>",
        pad_token: str | None = "<|endoftext|>",
        truncation_type: str = "right",
        enable_thinking: bool = True,
        **kwargs: Any,
    ):
        super().__init__(
            path,
            merges_file,
            special_tokens if special_tokens is not None else QWEN3_SPECIAL_TOKENS,
            max_seq_len,
            prompt_template=prompt_template,
            eos_token=eos_token,
            pad_token=pad_token,
            truncation_type=truncation_type,
            chat_format=Qwen3ChatFormat(enable_thinking=enable_thinking),
            **kwargs,
        )


def qwen3_tokenizer(
    path: str,
    merges_file: str,
    special_tokens_path: str | None = None,
    max_seq_len: int | None = None,
    prompt_template: Any = None,
    truncation_type: str = "right",
    **kwargs: Any,
) -> Qwen3Tokenizer:
    """Qwen3 tokenizer from ``vocab.json`` + ``merges.txt`` (torchtune's arguments)."""
    special_tokens = load_special_tokens(special_tokens_path) if special_tokens_path else None
    return Qwen3Tokenizer(
        path,
        merges_file,
        special_tokens=special_tokens,
        max_seq_len=max_seq_len,
        prompt_template=prompt_template,
        truncation_type=truncation_type,
        **kwargs,
    )
