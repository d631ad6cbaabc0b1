"""Qwen2.5 tokenizer: Qwen2's BPE with Qwen2.5's added tokens, EOS ``<|im_end|>``."""

from __future__ import annotations

from typing import Any

from tunesmith.data.tokenizers import ChatMLFormat, load_special_tokens
from tunesmith.models.qwen2._tokenizer import QWEN2_SPECIAL_TOKENS, Qwen2Tokenizer

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


class Qwen2_5Tokenizer(Qwen2Tokenizer):  # noqa: N801 - torchtune's name
    """Qwen2.5: :class:`Qwen2Tokenizer` with Qwen2.5's special tokens, EOS ``<|im_end|>``,
    the official default system prompt, and tool schemas / ``tool_calls`` / ``tool``
    results as the official template renders them (``ChatMLFormat(tools=True)``)."""

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
        default_system_prompt: str | None = QWEN2_5_DEFAULT_SYSTEM_PROMPT,
        **kwargs: Any,
    ):
        # tools, tool calls and results as Qwen2.5's official template renders them
        kwargs.setdefault("chat_format", ChatMLFormat(default_system_prompt, tools=True))
        super().__init__(
            path,
            merges_file,
            special_tokens if special_tokens is not None else QWEN2_5_SPECIAL_TOKENS,
            max_seq_len,
            prompt_template=prompt_template,
            eos_token=eos_token,
            pad_token=pad_token,
            truncation_type=truncation_type,
            default_system_prompt=default_system_prompt,
            **kwargs,
        )


def qwen2_5_tokenizer(
    path: str,
    merges_file: str,
    special_tokens_path: str | None = None,
    max_seq_len: int | None = None,
    prompt_template: Any = None,
    truncation_type: str = "right",
    **kwargs: Any,
) -> Qwen2_5Tokenizer:
    """Qwen2.5 tokenizer from ``vocab.json`` + ``merges.txt`` (torchtune's arguments)."""
    special_tokens = load_special_tokens(special_tokens_path) if special_tokens_path else None
    return Qwen2_5Tokenizer(
        path,
        merges_file,
        special_tokens=special_tokens,
        max_seq_len=max_seq_len,
        prompt_template=prompt_template,
        truncation_type=truncation_type,
        **kwargs,
    )
