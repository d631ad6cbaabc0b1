"""Llama 4 tokenizer: tiktoken ranks file (o200k-style pre-tokenizer) + Llama 4's special
tokens (ids 200000-202047, torchtune's ``LLAMA4_SPECIAL_TOKENS`` table) + the official chat format (:class:`Llama4ChatFormat`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.data.tokenizers import (
    ChatModelTokenizer,
    Llama4ChatFormat,
    TikTokenBaseTokenizer,
)

__all__ = ["LLAMA4_SPECIAL_TOKENS", "O200K_PATTERN", "Llama4Tokenizer"]

#: the pre-tokenizer regex of Llama 4's tiktoken model (OpenAI's o200k pattern)
O200K_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _reserved(start: int, stop: int, name: str = "", first: int = 0) -> dict[str, int]:
    stem = f"{name}_reserved_special_token" if name else "reserved_special_token"
    return {f"<|{stem}_{first + i}|>": idx for i, idx in enumerate(range(start, stop))}


_TEXT = {
    "<|begin_of_text|>": 200000,
    "<|end_of_text|>": 200001,
    "<|fim_prefix|>": 200002,
    "<|fim_middle|>": 200003,
    "<|fim_suffix|>": 200004,
    "<|header_start|>": 200005,
    "<|header_end|>": 200006,
    "<|eom|>": 200007,
    "<|eot|>": 200008,
    "<|step|>": 200009,
    **_reserved(200010, 200018, "text_post_train"),
    "<|finetune_right_pad|>": 200018,
    **_reserved(200019, 200080, "text_post_train", 8),
}
_VISION = {
    "<|image_start|>": 200080,
    "<|image_end|>": 200081,
    "<|vision_reserved_special_token_0|>": 200082,
    "<|vision_reserved_special_token_1|>": 200083,
    "<|tile_x_separator|>": 200084,
    "<|tile_y_separator|>": 200085,
    **_reserved(200086, 200090, "vision", 2),
    "<|image|>": 200090,
    "<|vision_reserved_special_token_6|>": 200091,
    "<|patch|>": 200092,
    **_reserved(200093, 201134, "vision", 7),
}
_REASONING = {
    **_reserved(201134, 201142, "reasoning"),
    "<|reasoning_thinking_start|>": 201142,
    "<|reasoning_thinking_end|>": 201143,
}
LLAMA4_SPECIAL_TOKENS: dict[str, int] = {
    **_TEXT,
    **_VISION,
    **_REASONING,
    **_reserved(201144, 202048),
}
_REQUIRED = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|header_start|>",
    "<|header_end|>",
    "<|eot|>",
    "<|finetune_right_pad|>",
)


class Llama4Tokenizer(ChatModelTokenizer):
    """Llama 4 tokenizer (torchtune's ``Llama4Tokenizer`` arguments).

    Args:
        path: the tiktoken ``tokenizer.model`` of a Llama 4 checkpoint.
        special_tokens: ``{token: id}``; default :data:`LLAMA4_SPECIAL_TOKENS`.
        max_seq_len, prompt_template, truncation_type: see :class:`ChatModelTokenizer`.

    Stops at ``<|end_of_text|>``, ``<|eot|>`` and ``<|eom|>``; pads with
    ``<|finetune_right_pad|>``.
    """

    def __init__(
        self,
        path: str | Path,
        special_tokens: dict[str, int] | None = None,
        max_seq_len: int | None = None,
        prompt_template: Any = None,
        truncation_type: str = "right",
    ):
        specials = dict(special_tokens if special_tokens is not None else LLAMA4_SPECIAL_TOKENS)
        missing = [t for t in _REQUIRED if t not in specials]
        if missing:
            raise ValueError(f"Llama 4 special tokens are missing {missing}")
        bos_id, eos_id = specials["<|begin_of_text|>"], specials["<|end_of_text|>"]
        base = TikTokenBaseTokenizer(
            path,
            name="llama4_tiktoken",
            pattern=O200K_PATTERN,
            bos_id=bos_id,
            eos_id=eos_id,
            special_tokens=specials,
        )
        self.eot_id = specials["<|eot|>"]
        self.eom_id = specials.get("<|eom|>", self.eot_id)
        self.image_id = specials.get("<|image|>")
        self.patch_id = specials.get("<|patch|>")
        super().__init__(
            base,
            specials,
            Llama4ChatFormat(),
            bos_id=bos_id,
            eos_id=eos_id,
            pad_id=specials["<|finetune_right_pad|>"],
            stop_tokens=[eos_id, self.eot_id, self.eom_id],
            max_seq_len=max_seq_len,
            prompt_template=prompt_template,
            truncation_type=truncation_type,
        )
