"""tiktoken-based BPE over a ranks file (Llama 3's ``tokenizer.model``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from tunesmith.data.tokenizers._utils import check_file

__all__ = ["TikTokenBaseTokenizer", "CL100K_PATTERN"]

CL100K_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# tiktoken's regex is slow on huge inputs and on very long runs of (non-)whitespace:
# encode in chunks, cutting only between such runs (the pattern never joins them).
_MAX_ENCODE_CHARS = 400_000
_MAX_NO_WHITESPACE_CHARS = 25_000


def _split_long_repetitions(s: str, max_run: int) -> Iterator[str]:
    """Cut ``s`` so no piece holds more than ``max_run`` consecutive (non-)space chars."""
    current_len = 0
    current_is_space = s[:1].isspace()
    start = 0
    for i, ch in enumerate(s):
        is_space = ch.isspace()
        if is_space != current_is_space:
            current_len, current_is_space = 1, is_space
        else:
            current_len += 1
            if current_len > max_run:
                yield s[start:i]
                start, current_len = i, 1
    yield s[start:]


class TikTokenBaseTokenizer:
    """Plain-text BPE with tiktoken (special-token strings in text are encoded as text).

    Args:
        path: tiktoken ranks file (base64 token, rank per line).
        name: a name for the encoding.
        pattern: pre-tokenization regex.
        bos_id, eos_id: ids added by ``encode(add_bos, add_eos)``.
        special_tokens: ``{token: id}`` above the ranks (for ``decode`` of those ids).
    """

    def __init__(
        self,
        path: str | Path,
        name: str,
        pattern: str,
        bos_id: int,
        eos_id: int,
        special_tokens: Mapping[str, int],
    ):
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        ranks_path = check_file(path, "tiktoken ranks file (tokenizer.model)")
        try:
            ranks = load_tiktoken_bpe(str(ranks_path))
        except Exception as e:
            raise ValueError(
                f"{ranks_path} is not a tiktoken ranks file (one 'base64-token rank' per line); "
                "a SentencePiece tokenizer.model needs a SentencePiece-based tokenizer"
            ) from e
        self.path = str(ranks_path)
        self.base_vocab_size = len(ranks)
        self.tt_model = tiktoken.Encoding(
            name=name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=dict(special_tokens)
        )
        self.bos_id = bos_id
        self.eos_id = eos_id

    @property
    def vocab_size(self) -> int:
        return self.tt_model.n_vocab

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        ids: list[int] = []
        for i in range(0, len(text), _MAX_ENCODE_CHARS):
            chunk = text[i : i + _MAX_ENCODE_CHARS]
            # A chunk no longer than the run limit cannot hold a too-long run: skip the
            # per-character scan (it dominated tokenization time on ordinary rows).
            pieces = (
                (chunk,)
                if len(chunk) <= _MAX_NO_WHITESPACE_CHARS
                else _split_long_repetitions(chunk, _MAX_NO_WHITESPACE_CHARS)
            )
            for piece in pieces:
                # == encode(piece, allowed_special=set(), disallowed_special=()), without
                # the scan for special-token strings that would then be encoded as text
                ids.extend(self.tt_model.encode_ordinary(piece))
        if add_bos:
            ids.insert(0, self.bos_id)
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, token_ids: list[int]) -> str:
        return self.tt_model.decode(list(token_ids))
