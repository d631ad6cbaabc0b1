"""Phi-4 tokenizers: Phi-4 (14B): byte-level BPE (cl100k) from vocab.json + merges.txt;
Phi-4-mini: its o200k byte-level BPE ``tokenizer.json`` and the chat template of the
``tokenizer_config.json`` beside it (the Hugging Face tokenizer route: the checkpoint ships no
tiktoken / vocab.json form)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.data.tokenizers import (
    CL100K_PATTERN,
    ByteLevelBPEBaseTokenizer,
    ChatModelTokenizer,
    Phi4ChatFormat,
    load_special_tokens,
)
from tunesmith.models._hf_chat_tokenizer import hf_chat_tokenizer_builder

__all__ = ["PHI4_SPECIAL_TOKENS", "Phi4Tokenizer", "phi4_mini_tokenizer", "phi4_tokenizer"]


def _phi4_special_tokens() -> dict[str, int]:
    tokens = {
        "<|dummy_0|>": 100256,
        "<|endoftext|>": 100257,
        "<|fim_prefix|>": 100258,
        "<|fim_middle|>": 100259,
        "<|fim_suffix|>": 100260,
        "<|dummy_1|>": 100261,
        "<|dummy_2|>": 100262,
        "<|dummy_3|>": 100263,
        "<|im_start|>": 100264,
        "<|im_end|>": 100265,
        "<|im_sep|>": 100266,
        "<|endofprompt|>": 100276,
    }
    dummy = 4
    for idx in range(100267, 100352):
        if idx != 100276:
            tokens[f"<|dummy_{dummy}|>"] = idx
            dummy += 1
    return tokens


PHI4_SPECIAL_TOKENS: dict[str, int] = _phi4_special_tokens()


class Phi4Tokenizer(ChatModelTokenizer):
    """Phi-4 tokenizer: ``<|im_start|>{role}<|im_sep|>{content}<|im_end|>`` per message.

    EOS is ``<|im_end|>`` (generation also stops at ``<|endoftext|>``); padding uses
    ``<|dummy_85|>``; no BOS, as in the official template.
    """

    def __init__(
        self,
        vocab_path: str | Path,
        merges_path: str | Path,
        special_tokens: dict[str, int] | None = None,
        max_seq_len: int | None = None,
        prompt_template: Any = None,
        truncation_type: str = "right",
    ):
        specials = dict(special_tokens) if special_tokens is not None else dict(PHI4_SPECIAL_TOKENS)
        base = ByteLevelBPEBaseTokenizer(vocab_path, merges_path, pattern=CL100K_PATTERN, nfc=False)
        eos_id = specials["<|im_end|>"]
        super().__init__(
            base,
            specials,
            Phi4ChatFormat(),
            bos_id=None,
            eos_id=eos_id,
            pad_id=specials.get("<|dummy_85|>", specials["<|endoftext|>"]),
            stop_tokens=[eos_id, specials["<|endoftext|>"]],
            max_seq_len=max_seq_len,
            prompt_template=prompt_template,
            truncation_type=truncation_type,
        )


def phi4_tokenizer(
    vocab_path: str | None = None,
    merges_path: str | None = None,
    special_tokens_path: str | None = None,
    max_seq_len: int | None = None,
    prompt_template: Any = None,
    truncation_type: str = "right",
    path: str | None = None,
) -> Phi4Tokenizer:
    """Phi-4 tokenizer from ``vocab.json`` + ``merges.txt`` (torchtune's arguments).

    ``path`` (a directory holding both files) may be given instead of the two paths.
    """
    if path is not None and (vocab_path is None or merges_path is None):
        vocab_path = vocab_path or str(Path(path) / "vocab.json")
        merges_path = merges_path or str(Path(path) / "merges.txt")
    if vocab_path is None or merges_path is None:
        raise ValueError(
            "phi4_tokenizer needs vocab_path and merges_path (or path to their folder)"
        )
    special_tokens = load_special_tokens(special_tokens_path) if special_tokens_path else None
    return Phi4Tokenizer(
        vocab_path,
        merges_path,
        special_tokens=special_tokens,
        max_seq_len=max_seq_len,
        prompt_template=prompt_template,
        truncation_type=truncation_type,
    )


phi4_mini_tokenizer = hf_chat_tokenizer_builder("phi4_mini_tokenizer", "Phi-4-mini", __name__)
