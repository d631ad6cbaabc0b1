"""Phi-3 / Phi-3.5 mini tokenizer: the Llama 2 SentencePiece pieces plus Phi-3's added tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.data.tokenizers import (
    ChatModelTokenizer,
    Phi3ChatFormat,
    SentencePieceBaseTokenizer,
    load_special_tokens,
)

__all__ = ["PHI3_SPECIAL_TOKENS", "Phi3MiniTokenizer", "phi3_mini_tokenizer"]

PHI3_SPECIAL_TOKENS: dict[str, int] = {
    "<|endoftext|>": 32000,
    "<|assistant|>": 32001,
    "<|placeholder1|>": 32002,
    "<|placeholder2|>": 32003,
    "<|placeholder3|>": 32004,
    "<|placeholder4|>": 32005,
    "<|system|>": 32006,
    "<|end|>": 32007,
    "<|placeholder5|>": 32008,
    "<|placeholder6|>": 32009,
    "<|user|>": 32010,
}


class Phi3MiniTokenizer(ChatModelTokenizer):
    """Phi-3 / Phi-3.5 mini tokenizer with the official chat layout.

    ``<|system|>\\n{content}<|end|>\\n<|user|>\\n...<|end|>\\n<|assistant|>\\n...<|end|>\\n``
    then ``<|endoftext|>`` (the EOS) after a complete conversation; no BOS, as in the
    official template. Text after each special token is encoded with SentencePiece's
    leading-space piece, as Phi-3's Hugging Face tokenizer does (``"\\n"`` -> ``[29871, 13]``).
    Generation stops at ``<|endoftext|>`` or ``<|end|>``.
    """

    def __init__(
        self,
        path: str | Path,
        special_tokens: dict[str, int] | None = None,
        max_seq_len: int | None = None,
        prompt_template: Any = None,
        truncation_type: str = "right",
    ):
        base = SentencePieceBaseTokenizer(path)
        sp = base.spm_model
        specials = {sp.id_to_piece(i): i for i in (sp.unk_id(), base.bos_id, base.eos_id) if i >= 0}
        specials.update(special_tokens if special_tokens is not None else PHI3_SPECIAL_TOKENS)
        eos_id = specials["<|endoftext|>"]
        super().__init__(
            base,
            specials,
            Phi3ChatFormat(),
            bos_id=base.bos_id,
            eos_id=eos_id,
            pad_id=eos_id,
            stop_tokens=[eos_id, specials["<|end|>"]],
            max_seq_len=max_seq_len,
            prompt_template=prompt_template,
            truncation_type=truncation_type,
        )


def phi3_mini_tokenizer(
    path: str,
    special_tokens_path: str | None = None,
    max_seq_len: int | None = None,
    prompt_template: Any = None,
    truncation_type: str = "right",
) -> Phi3MiniTokenizer:
    """Phi-3 mini tokenizer from its SentencePiece ``tokenizer.model`` (torchtune's arguments).

    ``special_tokens_path``: an HF tokenizer.json (or ``{token: id}`` JSON) whose added
    tokens replace :data:`PHI3_SPECIAL_TOKENS`.
    """
    special_tokens = load_special_tokens(special_tokens_path) if special_tokens_path else None
    return Phi3MiniTokenizer(
        path,
        special_tokens=special_tokens,
        max_seq_len=max_seq_len,
        prompt_template=prompt_template,
        truncation_type=truncation_type,
    )
