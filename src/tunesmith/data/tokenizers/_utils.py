"""Shared tokenizer pieces: interfaces, truncation, special-token splitting and files."""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from tunesmith.data._messages import Message

__all__ = [
    "BaseTokenizer",
    "ModelTokenizer",
    "SpecialTokenSplitter",
    "truncate",
    "truncate_messages_tokens",
    "tokenize_sample",
    "tokenize_messages_no_special_tokens",
    "load_special_tokens",
    "parse_hf_tokenizer_json",
    "check_file",
]


@runtime_checkable
class BaseTokenizer(Protocol):
    """Text <-> ids for plain text (no chat format): ``encode(text, add_bos, add_eos)``, ``decode``."""

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]: ...

    def decode(self, token_ids: list[int]) -> str: ...


@runtime_checkable
class ModelTokenizer(Protocol):
    """The interface every model tokenizer has (see docs/architecture.md)."""

    special_tokens: dict[str, int]
    max_seq_len: int | None

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]: ...

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str: ...

    def tokenize_messages(
        self, messages: list[Message], add_end_tokens: bool = True
    ) -> tuple[list[int], list[bool]]: ...

    def __call__(self, sample: dict[str, Any], inference: bool = False) -> dict[str, Any]: ...


def truncate(
    tokens: list[Any],
    max_seq_len: int,
    eos_id: Any | None = None,
    truncation_type: str = "right",
) -> list[Any]:
    """Cut ``tokens`` to ``max_seq_len`` (keep the start for ``right``, the end for ``left``).

    When ``eos_id`` is given the last kept element is forced to it, so a truncated
    sequence still ends with an end-of-sequence token (torchtune's behaviour).
    """
    if truncation_type == "right":
        out = list(tokens[:max_seq_len])
    elif truncation_type == "left":
        out = list(tokens[-max_seq_len:]) if max_seq_len > 0 else []
    else:
        raise ValueError(f"truncation_type must be 'left' or 'right', got {truncation_type!r}")
    if eos_id is not None and out and out[-1] != eos_id:
        out[-1] = eos_id
    return out


def truncate_messages_tokens(
    tokens: list[int],
    mask: list[bool],
    max_seq_len: int | None,
    eos_id: int,
    add_end_tokens: bool,
    truncation_type: str = "right",
) -> tuple[list[int], list[bool]]:
    """Cut a tokenized conversation to ``max_seq_len`` (no-op when None or short enough).

    With ``add_end_tokens`` the last kept token becomes ``eos_id`` and is masked (not
    trained on), as torchtune's ``tokenize_messages`` does.
    """
    if max_seq_len is None or len(tokens) <= max_seq_len:
        return tokens, mask
    tokens = truncate(tokens, max_seq_len, eos_id if add_end_tokens else None, truncation_type)
    mask = truncate(mask, max_seq_len, True if add_end_tokens else None, truncation_type)
    return tokens, mask


def tokenize_sample(
    tokenizer: ModelTokenizer, sample: dict[str, Any], inference: bool = False
) -> dict[str, Any]:
    """A model tokenizer's ``__call__``: replace ``sample["messages"]`` with ``sample["tokens"]``
    and ``sample["mask"]`` (no end tokens after the last message when ``inference``)."""
    if "messages" not in sample:
        raise KeyError(
            f"{type(tokenizer).__name__} expects a sample with a 'messages' list (from a message "
            f"transform); got keys {sorted(sample)}"
        )
    messages = sample.pop("messages")
    tools = sample.pop("tools", None)
    if tools is not None:  # only template-rendering tokenizers take tool schemas
        sample["tokens"], sample["mask"] = tokenizer.tokenize_messages(
            messages, add_end_tokens=not inference, tools=tools
        )
        return sample
    sample["tokens"], sample["mask"] = tokenizer.tokenize_messages(
        messages, add_end_tokens=not inference
    )
    return sample


class SpecialTokenSplitter:
    """Split text at special-token strings: ``"a<|x|>b"`` -> ``["a", 7, "b"]``.

    Longer tokens win over their prefixes. Empty text pieces are dropped.
    """

    def __init__(self, special_tokens: Mapping[str, int]):
        self.special_tokens = dict(special_tokens)
        names = sorted(self.special_tokens, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(n) for n in names)) if names else None

    def split(self, text: str) -> list[str | int]:
        if self._pattern is None:
            return [text] if text else []
        pieces: list[str | int] = []
        start = 0
        for match in self._pattern.finditer(text):
            if match.start() > start:
                pieces.append(text[start : match.start()])
            pieces.append(self.special_tokens[match.group()])
            start = match.end()
        if start < len(text):
            pieces.append(text[start:])
        return pieces


def _accepts(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def tokenize_messages_no_special_tokens(
    tokenizer: Any,
    messages: list[Message],
    *,
    bos_id: int | None = None,
    eos_id: int | None = None,
) -> tuple[list[int], list[bool]]:
    """Tokenize ``messages`` as plain text with no chat format (torchtune's helper for
    tokenizers without one): each message's text via ``tokenizer.encode`` (no BOS/EOS, its
    trailing spaces stripped), ``bos_id`` before each turn's first message and ``eos_id``
    after each assistant message when given; then truncated to ``tokenizer.max_seq_len``
    (ending with ``eos_id``). A message continuing a turn is encoded with
    ``trim_leading_whitespace=True`` (unless the previous one ended in a space) where the
    tokenizer's ``encode`` takes that argument (SentencePiece).

    Returns:
        ``(tokens, mask)``; ``mask[i]`` is the masked flag of the message token ``i`` came from.

    Raises:
        RuntimeError: a message holds non-text content (images).
    """
    trim_ok = _accepts(tokenizer.encode, "trim_leading_whitespace")
    max_seq_len = getattr(tokenizer, "max_seq_len", None)
    tokens: list[int] = []
    mask: list[bool] = []
    start_of_turn, prev_ends_with_space = True, False
    masked = False
    for message in messages:
        masked = message.masked
        if start_of_turn and bos_id is not None:
            tokens.append(bos_id)
            mask.append(masked)
        trim = (not start_of_turn) and not prev_ends_with_space
        ids: list[int] = []
        for item in message.content:
            if item["type"] != "text":
                raise RuntimeError(f"Unsupported message content type: {item['type']}")
            kwargs = {"trim_leading_whitespace": trim} if trim_ok else {}
            ids += tokenizer.encode(
                item["content"].rstrip(" "), add_bos=False, add_eos=False, **kwargs
            )
            prev_ends_with_space = item["content"].endswith(" ")
        tokens += ids
        mask += [masked] * len(ids)
        if message.role == "assistant":
            if eos_id is not None:
                tokens.append(eos_id)
                mask.append(masked)
            start_of_turn = True
        else:
            start_of_turn = False
        if max_seq_len is not None and len(tokens) >= max_seq_len:
            break
    if max_seq_len is not None:
        tokens = truncate(tokens, max_seq_len, eos_id)
        mask = truncate(mask, max_seq_len, masked if eos_id is not None else None)
    return tokens, mask


def check_file(path: str | Path, what: str) -> Path:
    """Return ``Path(path)`` or raise ``FileNotFoundError`` naming what the file was for."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"{what} not found at {str(p)!r}; check the tokenizer 'path' in your config "
            "(download the model first, e.g. `tunesmith download <repo>`)"
        )
    return p


def load_special_tokens(path: str | Path, *, only_special: bool = False) -> dict[str, int]:
    """Read special tokens from a JSON file: a ``{token: id}`` mapping or an HF tokenizer.json.

    For an HF ``tokenizer.json`` (torchtune's ``special_tokens_path``) the ``added_tokens``
    list is used; ``only_special`` keeps those flagged ``"special": true``.
    """
    data = json.loads(check_file(path, "special tokens file").read_text(encoding="utf-8"))
    if isinstance(data, Mapping) and "added_tokens" in data:
        tokens: Iterable[Mapping[str, Any]] = data["added_tokens"]
        return {
            t["content"]: int(t["id"]) for t in tokens if t.get("special", True) or not only_special
        }
    if isinstance(data, Mapping) and all(isinstance(v, int) for v in data.values()):
        return {str(k): int(v) for k, v in data.items()}
    raise ValueError(
        f"{path}: expected a {{token: id}} mapping or an HF tokenizer.json with 'added_tokens'"
    )


def parse_hf_tokenizer_json(tokenizer_json_path: str | Path) -> dict[str, int]:
    """torchtune's name: ``{content: id}`` of the added tokens in an HF tokenizer.json."""
    return load_special_tokens(tokenizer_json_path)
