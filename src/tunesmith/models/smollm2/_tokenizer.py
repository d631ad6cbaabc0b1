"""SmolLM2 tokenizer: byte-level BPE from tokenizer.json, ChatML chat layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.data.tokenizers import ChatMLFormat, ChatModelTokenizer, HuggingFaceBaseTokenizer
from tunesmith.data.tokenizers._utils import check_file

__all__ = ["SMOLLM2_DEFAULT_SYSTEM_PROMPT", "SmolLM2Tokenizer", "smollm2_tokenizer"]

SMOLLM2_DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
)


class SmolLM2Tokenizer(ChatModelTokenizer):
    """SmolLM2 (-Instruct): ChatML, EOS ``<|im_end|>``, the official default system prompt
    when the conversation has none (``default_system_prompt=None`` disables it). No BOS."""

    def __init__(
        self,
        path: str | Path,
        max_seq_len: int | None = None,
        prompt_template: Any = None,
        truncation_type: str = "right",
        default_system_prompt: str | None = SMOLLM2_DEFAULT_SYSTEM_PROMPT,
    ):
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(check_file(path, "SmolLM2 tokenizer.json")))
        base = HuggingFaceBaseTokenizer.from_tokenizer_object(tok, eos_token="<|im_end|>")
        specials = base.added_tokens()
        eos_id = specials["<|im_end|>"]
        super().__init__(
            base,
            specials,
            ChatMLFormat(default_system_prompt, family="SmolLM2"),
            bos_id=None,
            eos_id=eos_id,
            pad_id=eos_id,
            stop_tokens=sorted({eos_id, specials.get("<|endoftext|>", eos_id)}),
            max_seq_len=max_seq_len,
            prompt_template=prompt_template,
            truncation_type=truncation_type,
        )


def smollm2_tokenizer(
    path: str,
    max_seq_len: int | None = None,
    prompt_template: Any = None,
    truncation_type: str = "right",
    default_system_prompt: str | None = SMOLLM2_DEFAULT_SYSTEM_PROMPT,
) -> SmolLM2Tokenizer:
    """SmolLM2 tokenizer from its ``tokenizer.json``."""
    return SmolLM2Tokenizer(
        path,
        max_seq_len=max_seq_len,
        prompt_template=prompt_template,
        truncation_type=truncation_type,
        default_system_prompt=default_system_prompt,
    )
