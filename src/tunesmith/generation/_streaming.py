"""Streaming decoded text to a terminal while tokens arrive."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Protocol, TextIO

import torch

__all__ = ["TextStreamer"]


class _Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


class TextStreamer:
    """``on_token`` callback for :func:`generate` that prints row 0's text as it grows.

    Decoding the whole generated suffix each step (not token by token) keeps multi-byte
    characters and tokenizers that merge spaces across tokens correct; text is only printed
    once it no longer ends in an incomplete UTF-8 sequence (U+FFFD).
    """

    def __init__(
        self,
        tokenizer: _Decoder,
        stop_tokens: list[int] | None = None,
        out: TextIO | None = None,
        row: int = 0,
        transform: Callable[[str], str] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.stop_tokens = set(stop_tokens or [])
        self.out = out or sys.stdout
        self.row = row
        self.transform = transform
        self.ids: list[int] = []
        self.printed = ""
        self.finished = False

    def __call__(self, new_tokens: torch.Tensor) -> None:
        if self.finished:
            return
        token = int(new_tokens[self.row])
        if token in self.stop_tokens:
            self.finished = True
            return
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        if self.transform is not None:
            text = self.transform(text)
        if text.startswith(self.printed):
            self.out.write(text[len(self.printed) :])
        else:  # the tokenizer revised earlier text: print only what is new past the common part
            self.out.write(text[len(_common_prefix(text, self.printed)) :])
        self.out.flush()
        self.printed = text

    @property
    def text(self) -> str:
        """Everything decoded so far."""
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]
