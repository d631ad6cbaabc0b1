"""Plain-text tokenizers backed by the Hugging Face ``tokenizers`` library.

``HuggingFaceBaseTokenizer`` wraps any ``tokenizers.Tokenizer`` (a tokenizer.json, or an
object built in memory, e.g. from a GGUF vocabulary). ``ByteLevelBPEBaseTokenizer``
builds the GPT-2 / Qwen2 byte-level BPE from ``vocab.json`` + ``merges.txt``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunesmith.data.tokenizers._utils import check_file

__all__ = [
    "HuggingFaceBaseTokenizer",
    "ByteLevelBPEBaseTokenizer",
    "GPT2BaseTokenizer",
    "QWEN2_PATTERN",
    "GPT2_PATTERN",
]

QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def _token_content(value: Any) -> str | None:
    """tokenizer_config.json stores tokens as strings or ``{"content": ...}`` dicts."""
    if isinstance(value, Mapping):
        return value.get("content")
    return value if isinstance(value, str) else None


class HuggingFaceBaseTokenizer:
    """Plain text <-> ids with a ``tokenizers.Tokenizer``.

    Args:
        tokenizer_json_path: a tokenizer.json.
        tokenizer_config_json_path: optional tokenizer_config.json (bos/eos token names).
        generation_config_path: optional generation_config.json (bos/eos ids when the
            tokenizer config has none).
    """

    def __init__(
        self,
        tokenizer_json_path: str | Path,
        *,
        tokenizer_config_json_path: str | Path | None = None,
        generation_config_path: str | Path | None = None,
    ):
        from tokenizers import Tokenizer

        path = check_file(tokenizer_json_path, "tokenizer.json")
        self.tokenizer = Tokenizer.from_file(str(path))
        self.path = str(path)
        self.config: dict[str, Any] = {}
        if tokenizer_config_json_path is not None:
            cfg_path = check_file(tokenizer_config_json_path, "tokenizer_config.json")
            self.config = json.loads(cfg_path.read_text(encoding="utf-8"))
        generation: dict[str, Any] = {}
        if generation_config_path is not None:
            gen_path = check_file(generation_config_path, "generation_config.json")
            generation = json.loads(gen_path.read_text(encoding="utf-8"))
        self.bos_token = _token_content(self.config.get("bos_token"))
        self.eos_token = _token_content(self.config.get("eos_token"))
        self.bos_id = self._id_or(self.bos_token, generation.get("bos_token_id"))
        eos = generation.get("eos_token_id")
        self.eos_id = self._id_or(self.eos_token, eos[0] if isinstance(eos, list) else eos)
        if self.eos_id is None:
            neither = tokenizer_config_json_path is None and generation_config_path is None
            raise ValueError(
                ("At least one of tokenizer_config_json_path or generation_config_path is "
                 "needed: " if neither else "")
                + f"{path}: no end-of-sequence token; pass tokenizer_config_json_path (with "
                "'eos_token') or generation_config_path (with 'eos_token_id')"
            )  # fmt: skip

    @classmethod
    def from_tokenizer_object(
        cls, tokenizer: Any, *, bos_token: str | None = None, eos_token: str | None = None
    ) -> HuggingFaceBaseTokenizer:
        """Wrap an in-memory ``tokenizers.Tokenizer``; token names must be in its vocab."""
        self = cls.__new__(cls)
        self.tokenizer = tokenizer
        self.config = {"bos_token": bos_token, "eos_token": eos_token}
        self.bos_token, self.eos_token = bos_token, eos_token
        self.bos_id = self._id_or(bos_token, None)
        self.eos_id = self._id_or(eos_token, None)
        for name, token, idx in (("bos", bos_token, self.bos_id), ("eos", eos_token, self.eos_id)):
            if token is not None and idx is None:
                raise ValueError(f"{name}_token {token!r} is not in the tokenizer's vocabulary")
        return self

    def _id_or(self, token: str | None, fallback: int | None) -> int | None:
        if token is not None:
            idx = self.tokenizer.token_to_id(token)
            if idx is not None:
                return idx
        return fallback

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if add_bos and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        if add_eos and self.eos_id is not None:
            ids = [*ids, self.eos_id]
        return ids

    def decode(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def added_tokens(self) -> dict[str, int]:
        """``{content: id}`` of the tokenizer's added tokens."""
        return {t.content: i for i, t in self.tokenizer.get_added_tokens_decoder().items()}


class ByteLevelBPEBaseTokenizer(HuggingFaceBaseTokenizer):
    """Byte-level BPE (GPT-2, Qwen2, Phi-4) from ``vocab.json`` and ``merges.txt``.

    Args:
        vocab_path: ``vocab.json`` (``{token: id}``).
        merges_path: ``merges.txt`` (one merge per line, optional ``#version`` header).
        pattern: pre-tokenization regex (Qwen2's by default; :data:`GPT2_PATTERN` for GPT-2).
        nfc: apply NFC normalisation first (Qwen2 does, GPT-2 does not).
        bos_id, eos_id: ids that ``encode(add_bos, add_eos)`` add; None adds nothing.
    """

    def __init__(
        self,
        vocab_path: str | Path,
        merges_path: str | Path,
        *,
        pattern: str = QWEN2_PATTERN,
        nfc: bool = True,
        bos_id: int | None = None,
        eos_id: int | None = None,
    ):
        from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
        from tokenizers.models import BPE

        vocab_file = check_file(vocab_path, "vocab.json")
        merges_file = check_file(merges_path, "merges.txt")
        self.path, self.merges_file = str(vocab_file), str(merges_file)
        vocab, merges = BPE.read_file(str(vocab_file), str(merges_file))
        tok = Tokenizer(BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
        if nfc:
            tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        self.tokenizer = tok
        self.config = {}
        self.bos_token = self.eos_token = None
        self.bos_id, self.eos_id = bos_id, eos_id


def GPT2BaseTokenizer(  # noqa: N802 - torchtune's class name, built here by a function
    vocab_path: str | Path,
    merges_path: str | Path,
    unk_id: int | None = None,
    bos_id: int | None = None,
    eos_id: int | None = None,
    pad_id: int | None = None,
) -> ByteLevelBPEBaseTokenizer:
    """GPT-2's byte-level BPE (GPT-2 regex, no normalisation); torchtune's name and arguments."""
    tok = ByteLevelBPEBaseTokenizer(
        vocab_path, merges_path, pattern=GPT2_PATTERN, nfc=False, bos_id=bos_id, eos_id=eos_id
    )
    tok.unk_id, tok.pad_id = unk_id, pad_id  # type: ignore[attr-defined]
    return tok
