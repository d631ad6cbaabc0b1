"""T5's SentencePiece tokenizer (torchtune's ``T5Tokenizer``): no BOS, an EOS (``</s>``)
at the end, truncation that keeps it last."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunesmith.data.tokenizers._sentencepiece import SentencePieceBaseTokenizer

__all__ = ["T5Tokenizer"]


class T5Tokenizer(SentencePieceBaseTokenizer):
    """Text <-> T5 ids.

    Args:
        path: the SentencePiece model (``spiece.model``).
        max_seq_len: most ids per text, the EOS included.
        truncate: cut longer texts; False raises instead.
    """

    def __init__(self, path: str | Path, max_seq_len: int = 512, truncate: bool = True):
        super().__init__(path)
        self.max_seq_len = max_seq_len
        self.truncate = truncate

    def encode(self, text: str) -> list[int]:  # type: ignore[override]
        """The text's ids and the EOS.

        Raises:
            ValueError: more than ``max_seq_len`` ids and ``truncate`` is False.
        """
        ids = super().encode(text, add_bos=False, add_eos=True)
        if len(ids) > self.max_seq_len:
            if not self.truncate:
                raise ValueError(
                    f"text of {len(ids)} tokens exceeds max_seq_len {self.max_seq_len} "
                    "(pass truncate=True to cut it)"
                )
            ids = [*ids[: self.max_seq_len - 1], self.eos_id]
        return ids

    def __call__(self, sample: Mapping[str, Any], inference: bool = False) -> dict[str, Any]:
        """``sample["text"]`` -> ``sample["tokens"]`` (``text`` removed)."""
        out = dict(sample)
        out["tokens"] = self.encode(out.pop("text"))
        return out
