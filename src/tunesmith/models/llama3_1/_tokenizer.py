"""Llama 3.1 tokenizers: torchtune's ``llama3_tokenizer`` and the official-format ``llama3_1_tokenizer``."""

from __future__ import annotations

from typing import Any

from tunesmith.data.tokenizers import load_special_tokens
from tunesmith.models.llama3._tokenizer import Llama3Tokenizer, llama3_tokenizer

__all__ = ["llama3_tokenizer", "llama3_1_tokenizer", "llama3_1_system_preamble"]


def llama3_1_system_preamble(
    date_string: str = "26 Jul 2024", cutting_knowledge_date: str = "December 2023"
) -> str:
    """The header Llama 3.1/3.2/3.3's official chat template puts in every system message."""
    return f"Cutting Knowledge Date: {cutting_knowledge_date}\nToday Date: {date_string}\n\n"


def llama3_1_tokenizer(
    path: str,
    special_tokens_path: str | None = None,
    max_seq_len: int | None = None,
    prompt_template: Any = None,
    truncation_type: str = "right",
    date_string: str = "26 Jul 2024",
) -> Llama3Tokenizer:
    """Llama 3.1 / 3.2 / 3.3 tokenizer that reproduces the official chat template exactly.

    Same as :func:`llama3_tokenizer` (torchtune's, used by torchtune's configs) plus the
    system header the official template always renders (``Cutting Knowledge Date:
    December 2023`` / ``Today Date: {date_string}``; a system message is added when the
    conversation has none). ``date_string`` is the template's default date; Llama 3.2's
    template uses the current date when rendered by ``transformers``.
    """
    special_tokens = load_special_tokens(special_tokens_path) if special_tokens_path else None
    return Llama3Tokenizer(
        path,
        special_tokens=special_tokens,
        max_seq_len=max_seq_len,
        prompt_template=prompt_template,
        truncation_type=truncation_type,
        system_preamble=llama3_1_system_preamble(date_string),
    )
