"""Llama 3 / 3.1 / 3.2 / 3.3 tokenizer: tiktoken ranks file + Llama 3 special tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.data.tokenizers import (
    CL100K_PATTERN,
    ChatModelTokenizer,
    Llama3ChatFormat,
    TikTokenBaseTokenizer,
    load_special_tokens,
)

__all__ = ["LLAMA3_SPECIAL_TOKENS", "Llama3Tokenizer", "llama3_tokenizer"]

_NAMED = {
    "<|begin_of_text|>": 128000,
    "<|end_of_text|>": 128001,
    "<|reserved_special_token_0|>": 128002,
    "<|reserved_special_token_1|>": 128003,
    "<|finetune_right_pad_id|>": 128004,
    "<|step_id|>": 128005,
    "<|start_header_id|>": 128006,
    "<|end_header_id|>": 128007,
    "<|eom_id|>": 128008,
    "<|eot_id|>": 128009,
    "<|python_tag|>": 128010,
}
# 128011-128255 are reserved; <|image|> (Llama 3.2 Vision) is the extra id 128256.
LLAMA3_SPECIAL_TOKENS: dict[str, int] = {
    **_NAMED,
    **{f"<|reserved_special_token_{2 + i}|>": 128011 + i for i in range(256 - len(_NAMED))},
    "<|image|>": 128256,
}


class Llama3Tokenizer(ChatModelTokenizer):
    """Llama 3.x tokenizer (torchtune's name and arguments).

    Messages are laid out as ``<|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>``
    after ``<|begin_of_text|>``, as the official chat template does (content trimmed).
    Tool schemas, ``tool_calls`` and ``tool`` results are rendered as Llama 3.1's official
    template does (see :class:`~tunesmith.data.tokenizers.Llama3ChatFormat`).

    Args:
        path: the tiktoken ``tokenizer.model`` (``original/tokenizer.model`` in Meta's repos).
        special_tokens: ``{token: id}``; default :data:`LLAMA3_SPECIAL_TOKENS`.
        max_seq_len, prompt_template, truncation_type: see :class:`ChatModelTokenizer`.
        system_preamble: text put before every system message's content, and in a system
            message inserted when the conversation has none (Llama 3.1+'s
            ``Cutting Knowledge Date`` header; see ``llama3_1_tokenizer``).
    """

    def __init__(
        self,
        path: str | Path,
        special_tokens: dict[str, int] | None = None,
        max_seq_len: int | None = None,
        prompt_template: Any = None,
        truncation_type: str = "right",
        system_preamble: str | None = None,
    ):
        specials = (
            dict(special_tokens) if special_tokens is not None else dict(LLAMA3_SPECIAL_TOKENS)
        )
        missing = [
            t for t in ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>") if t not in specials
        ]
        if missing:
            raise ValueError(f"Llama 3 special tokens are missing {missing}")
        bos_id, eos_id = specials["<|begin_of_text|>"], specials["<|end_of_text|>"]
        base = TikTokenBaseTokenizer(
            path,
            name="llama3_tiktoken",
            pattern=CL100K_PATTERN,
            bos_id=bos_id,
            eos_id=eos_id,
            special_tokens=specials,
        )
        self.start_header_id = specials["<|start_header_id|>"]
        self.end_header_id = specials["<|end_header_id|>"]
        self.eot_id = specials["<|eot_id|>"]
        self.eom_id = specials.get("<|eom_id|>", self.eot_id)
        self.python_tag = specials.get("<|python_tag|>")
        self.image_id = specials.get("<|image|>")
        image_token = "<|image|>" if self.image_id is not None else None
        super().__init__(
            base,
            specials,
            Llama3ChatFormat(image_token=image_token, system_preamble=system_preamble),
            bos_id=bos_id,
            eos_id=eos_id,
            pad_id=specials.get("<|finetune_right_pad_id|>", 0),
            stop_tokens=[eos_id, self.eom_id, self.eot_id],
            max_seq_len=max_seq_len,
            prompt_template=prompt_template,
            truncation_type=truncation_type,
        )


def llama3_tokenizer(
    path: str,
    special_tokens_path: str | None = None,
    max_seq_len: int | None = None,
    prompt_template: Any = None,
    truncation_type: str = "right",
) -> Llama3Tokenizer:
    """Llama 3.x tokenizer from Meta's tiktoken ``tokenizer.model``.

    Args:
        path: tokenizer.model (tiktoken ranks).
        special_tokens_path: optional HF tokenizer.json (or ``{token: id}`` JSON) whose added
            tokens replace the default special tokens.
        max_seq_len: truncate tokenized samples to this length.
        prompt_template: dotted path, ``{role: [prepend, append]}`` mapping or template object.
        truncation_type: ``right`` or ``left``.
    """
    special_tokens = load_special_tokens(special_tokens_path) if special_tokens_path else None
    return Llama3Tokenizer(
        path,
        special_tokens=special_tokens,
        max_seq_len=max_seq_len,
        prompt_template=prompt_template,
        truncation_type=truncation_type,
    )
