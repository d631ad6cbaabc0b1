"""GGUF vocabularies: the :class:`GGUFVocab` record and the SentencePiece reader.

A GGUF vocabulary is ``tokenizer.ggml.*``: ``model`` ``gpt2`` (byte-level BPE: tokens,
merges, pre-tokenizer name; built by ``gguf_export.gguf_vocab``) or ``llama`` (SentencePiece:
pieces, scores, token types; built here from a ``tokenizer.model`` as llama.cpp's
``convert_hf_to_gguf.py`` builds it for Llama 2, Mistral, Gemma 2/3 and Phi-3).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["GGUFVocab", "spm_vocab"]

# GGUF token types (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass(frozen=True)
class GGUFVocab:
    """A vocabulary as GGUF stores it (``tokenizer.ggml.*``).

    ``model`` is ``gpt2`` (byte-level BPE: ``merges`` and ``pre`` are used) or ``llama``
    (SentencePiece: ``scores`` are used; ``pre`` is ``default``)."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    add_bos_token: bool
    chat_template: str | None
    model: str = "gpt2"
    scores: list[float] | None = None
    unk_id: int | None = None
    add_eos_token: bool | None = None


def spm_vocab(
    tokenizer_model: str | os.PathLike[str],
    *,
    vocab_size: int | None = None,
    added_tokens: Mapping[int, tuple[str, bool]] | None = None,
    bos_token: str | int | None = None,
    eos_token: str | int | None = None,
    pad_token: str | int | None = None,
    unk_token: str | int | None = None,
    add_bos_token: bool = True,
    add_eos_token: bool | None = None,
    chat_template: str | None = None,
) -> GGUFVocab:
    """A SentencePiece ``tokenizer.model`` as GGUF's ``llama`` vocabulary.

    Each piece keeps its score; its type is UNKNOWN / CONTROL / UNUSED / BYTE as the model
    marks it, else NORMAL. ``added_tokens`` (``{id: (content, special)}``, e.g. Phi-3's
    ``<|end|>``) override or extend the pieces with score -1000, CONTROL when special, else
    USER_DEFINED (``▁`` in their text written as a space). Ids up to ``vocab_size`` (the
    model's embedding rows) that nothing names become ``[PAD{i}]`` UNUSED tokens.
    Special tokens are given as text or id; ``unk_token`` defaults to the model's unknown.
    """
    from sentencepiece import SentencePieceProcessor

    path = Path(tokenizer_model)
    if not path.is_file():
        raise FileNotFoundError(f"SentencePiece model {str(path)!r} does not exist")
    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(path))
    added = dict(added_tokens or {})
    n = max([sp.vocab_size(), *(i + 1 for i in added)])
    if vocab_size is not None and vocab_size < n:
        raise ValueError(f"{path} (+ added tokens) has {n} tokens but vocab_size is {vocab_size}")
    n = vocab_size or n
    tokens = [f"[PAD{i}]" for i in range(n)]
    scores = [-10000.0] * n
    types = [UNUSED] * n
    for i in range(sp.vocab_size()):
        tokens[i], scores[i] = sp.IdToPiece(i), float(sp.GetScore(i))
        if sp.IsUnknown(i):
            types[i] = UNKNOWN
        elif sp.IsControl(i):
            types[i] = CONTROL
        elif sp.IsUnused(i):
            types[i] = UNUSED
        elif sp.IsByte(i):
            types[i] = BYTE
        else:
            types[i] = NORMAL
    for i, (text, special) in sorted(added.items()):
        tokens[i] = text if special else text.replace("\u2581", " ")
        scores[i] = -1000.0
        types[i] = CONTROL if special else USER_DEFINED
    index = {t: i for i, t in enumerate(tokens)}

    def token_id(token: str | int | None, what: str) -> int | None:
        if token is None or isinstance(token, int):
            return token
        if token not in index:
            raise ValueError(f"{what} {token!r} is not in the vocabulary of {path}")
        return index[token]

    unk = token_id(unk_token, "unk_token")
    if unk is None and sp.unk_id() >= 0:
        unk = int(sp.unk_id())
    return GGUFVocab(
        tokens=tokens,
        token_types=types,
        merges=[],
        pre="default",
        bos_id=token_id(bos_token, "bos_token"),
        eos_id=token_id(eos_token, "eos_token"),
        pad_id=token_id(pad_token, "pad_token"),
        add_bos_token=bool(add_bos_token),
        chat_template=chat_template,
        model="llama",
        scores=scores,
        unk_id=unk,
        add_eos_token=add_eos_token,
    )
