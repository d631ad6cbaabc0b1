"""Gemma / Gemma 2 tokenizer: SentencePiece with Gemma's turn tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.data.tokenizers import (
    ChatModelTokenizer,
    GemmaChatFormat,
    SentencePieceBaseTokenizer,
)

__all__ = ["GemmaTokenizer", "gemma_tokenizer"]

_TURN_TOKENS = {"<start_of_turn>": 106, "<end_of_turn>": 107}


class GemmaTokenizer(ChatModelTokenizer):
    """Gemma's SentencePiece model with its official chat layout.

    ``<bos><start_of_turn>user\\n{content}<end_of_turn>\\n<start_of_turn>model\\n...``; a
    system message is put before the first user message's text (Gemma has no system
    role). Turn-token ids are read from the model's pieces (106/107 in Gemma's).
    Generation stops at ``<eos>`` or ``<end_of_turn>``.
    """

    def __init__(
        self,
        path: str | Path,
        max_seq_len: int | None = None,
        prompt_template: Any = None,
        truncation_type: str = "right",
    ):
        base = SentencePieceBaseTokenizer(path)
        sp = base.spm_model
        specials: dict[str, int] = {}
        for idx in (sp.unk_id(), base.bos_id, base.eos_id, base.pad_id):
            if 0 <= idx < base.vocab_size:
                specials[sp.id_to_piece(idx)] = idx
        for piece, default in _TURN_TOKENS.items():
            idx = sp.piece_to_id(piece)
            specials[piece] = idx if sp.id_to_piece(idx) == piece else default
        super().__init__(
            base,
            specials,
            GemmaChatFormat(bos=sp.id_to_piece(base.bos_id)),
            bos_id=base.bos_id,
            eos_id=base.eos_id,
            pad_id=base.pad_id if base.pad_id >= 0 else 0,
            stop_tokens=[base.eos_id, specials["<end_of_turn>"]],
            max_seq_len=max_seq_len,
            prompt_template=prompt_template,
            truncation_type=truncation_type,
        )


def gemma_tokenizer(
    path: str,
    max_seq_len: int | None = None,
    prompt_template: Any = None,
    truncation_type: str = "right",
) -> GemmaTokenizer:
    """Gemma / Gemma 2 tokenizer from its SentencePiece ``tokenizer.model``."""
    return GemmaTokenizer(
        path,
        max_seq_len=max_seq_len,
        prompt_template=prompt_template,
        truncation_type=truncation_type,
    )
