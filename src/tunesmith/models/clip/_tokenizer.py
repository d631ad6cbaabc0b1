"""CLIP's text tokenizer: lower-cased byte-level BPE over a merges file, ``</w>`` marking
word ends (OpenAI CLIP's ``simple_tokenizer``, transformers' ``CLIPTokenizer``).

The vocabulary is implied by the merges file: the 256 byte symbols, the same with ``</w>``,
one entry per merge in file order, then ``<|startoftext|>`` and ``<|endoftext|>``. Text
cleaning is minimal (curly apostrophes become straight ones; ftfy is not used).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import regex

from tunesmith.data.tokenizers._utils import check_file

__all__ = ["CLIPTokenizer"]

WORD_END = "</w>"
START, END = "<|startoftext|>", "<|endoftext|>"
_PATTERN = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE,
)


@lru_cache(maxsize=1)
def _byte_symbols() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (printable bytes map to
    themselves, the rest to code points from 256 up, in byte order)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}  # insertion order is the vocabulary's order
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + i) for i, b in enumerate(others)})
    return table


def _read_merges(path: Path) -> list[tuple[str, str]]:
    merges = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        line = line.strip()
        if not line or (i == 0 and line.startswith("#version:")):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{i + 1}: a merge is two symbols, got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


class CLIPTokenizer:
    """Text <-> CLIP token ids.

    Args:
        path: the merges file (``merges.txt`` / ``bpe_simple_vocab_16e6.txt``).
        max_seq_len: most ids per text, start and end tokens included (77 in every CLIP).
        truncate: cut longer texts (keeping the end token last); False raises instead.
    """

    def __init__(self, path: str | Path, max_seq_len: int = 77, truncate: bool = True):
        merges = _read_merges(check_file(path, "CLIP merges file"))
        self.max_seq_len = max_seq_len
        self.truncate = truncate
        self.byte_encoder = _byte_symbols()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        symbols = list(self.byte_encoder.values())
        vocab = [*symbols, *(s + WORD_END for s in symbols), *("".join(m) for m in merges)]
        vocab += [START, END]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.sot_token = self.encoder[START]
        self.eot_token = self.encoder[END]
        self.pad_token = self.eot_token
        self._cache: dict[str, list[str]] = {START: [START], END: [END]}

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def _bpe(self, word: str) -> list[str]:
        """Merge the symbols of one pre-token (its last symbol carrying ``</w>``), lowest
        rank first, until no known pair is left."""
        if word in self._cache:
            return self._cache[word]
        parts = [*word[:-1], word[-1] + WORD_END]
        while len(parts) > 1:
            ranked = [(self.bpe_ranks[p], p) for p in zip(parts, parts[1:]) if p in self.bpe_ranks]
            if not ranked:
                break
            _, (first, second) = min(ranked)
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        """``[<|startoftext|>, ..., <|endoftext|>]`` of the lower-cased text.

        Raises:
            ValueError: the ids exceed ``max_seq_len`` and ``truncate`` is False.
        """
        text = text.replace("\u2019", "'").lower()
        ids = [self.sot_token]
        for piece in _PATTERN.findall(text):
            word = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[tok] for tok in self._bpe(word))
            if len(ids) >= self.max_seq_len:
                break
        ids.append(self.eot_token)
        if len(ids) > self.max_seq_len:
            if not self.truncate:
                raise ValueError(
                    f"text of {len(ids)} tokens exceeds max_seq_len {self.max_seq_len} "
                    "(pass truncate=True to cut it)"
                )
            ids = [*ids[: self.max_seq_len - 1], self.eot_token]
        return ids

    def decode(self, tokens: list[int]) -> str:
        """Ids -> text, special tokens included, each ``</w>`` a space."""
        text = "".join(self.decoder[t] for t in tokens)
        data = bytearray(self.byte_decoder[c] for c in text)
        return data.decode("utf-8", errors="replace").replace(WORD_END, " ")

    def __call__(self, sample: Mapping[str, Any], inference: bool = False) -> dict[str, Any]:
        """``sample["text"]`` -> ``sample["tokens"]`` (``text`` removed)."""
        out = dict(sample)
        out["tokens"] = self.encode(out.pop("text"))
        return out
