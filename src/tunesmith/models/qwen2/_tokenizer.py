"""Qwen2 tokenizer: byte-level BPE from vocab.json + merges.txt, ChatML chat layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.data.tokenizers import (
    ByteLevelBPEBaseTokenizer,
    ChatMLFormat,
    ChatModelTokenizer,
    load_special_tokens,
)

__all__ = [
    "QWEN2_SPECIAL_TOKENS",
    "QWEN2_DEFAULT_SYSTEM_PROMPT",
    "Qwen2Tokenizer",
    "qwen2_tokenizer",
]

QWEN2_SPECIAL_TOKENS: dict[str, int] = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
}
QWEN2_DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


class Qwen2Tokenizer(ChatModelTokenizer):
    """Qwen2-family tokenizer (torchtune's arguments), laid out as the official template does.

    ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message; when the conversation has
    no system message, ``default_system_prompt`` is inserted (masked) as the official
    template does (``None`` inserts nothing). No BOS.

    Args:
        path: ``vocab.json``.
        merges_file: ``merges.txt``.
        special_tokens: ``{token: id}`` added tokens.
        max_seq_len, prompt_template, truncation_type: see :class:`ChatModelTokenizer`.
        eos_token, pad_token, bos_token: token strings (``bos_token=None``: no BOS).
        default_system_prompt: see above.
        chat_format: override the layout (Qwen3 passes its own).
        errors, unk_token, bpe_cache_size: accepted for torchtune compatibility (the
            ``tokenizers`` library decodes with replacement and manages its own cache).
    """

    def __init__(
        self,
        path: str | Path,
        merges_file: str | Path,
        special_tokens: dict[str, int] | None = None,
        max_seq_len: int | None = None,
        *,
        prompt_template: Any = None,
        errors: str = "replace",
        unk_token: str | None = None,
        bos_token: str | None = None,
        eos_token: str = "<|endoftext|>",
        pad_token: str | None = "<|endoftext|>",
        bpe_cache_size: int = 151646,
        truncation_type: str = "right",
        default_system_prompt: str | None = QWEN2_DEFAULT_SYSTEM_PROMPT,
        chat_format: Any = None,
    ):
        specials = (
            dict(special_tokens) if special_tokens is not None else dict(QWEN2_SPECIAL_TOKENS)
        )
        for name, token in (
            ("eos_token", eos_token),
            ("pad_token", pad_token),
            ("bos_token", bos_token),
        ):
            if token is not None and token not in specials:
                raise ValueError(f"{name}={token!r} is not one of the special tokens")
        base = ByteLevelBPEBaseTokenizer(path, merges_file)
        self.im_start_id = specials["<|im_start|>"]
        self.im_end_id = specials["<|im_end|>"]
        eos_id = specials[eos_token]
        endoftext = specials.get("<|endoftext|>", eos_id)
        fmt = chat_format
        if fmt is None:
            fmt = ChatMLFormat(default_system_prompt, family="Qwen2")
        super().__init__(
            base,
            specials,
            fmt,
            bos_id=specials[bos_token] if bos_token is not None else None,
            eos_id=eos_id,
            pad_id=specials[pad_token] if pad_token is not None else None,
            stop_tokens=sorted({eos_id, self.im_end_id, endoftext}),
            max_seq_len=max_seq_len,
            prompt_template=prompt_template,
            truncation_type=truncation_type,
        )


def qwen2_tokenizer(
    path: str,
    merges_file: str,
    special_tokens_path: str | None = None,
    max_seq_len: int | None = None,
    prompt_template: Any = None,
    truncation_type: str = "right",
    **kwargs: Any,
) -> Qwen2Tokenizer:
    """Qwen2 tokenizer from ``vocab.json`` + ``merges.txt``; ``kwargs`` go to :class:`Qwen2Tokenizer`."""
    special_tokens = load_special_tokens(special_tokens_path) if special_tokens_path else None
    return Qwen2Tokenizer(
        path,
        merges_file,
        special_tokens=special_tokens,
        max_seq_len=max_seq_len,
        prompt_template=prompt_template,
        truncation_type=truncation_type,
        **kwargs,
    )
