"""A transparent byte-level tokenizer for dataset tests: expected ids are easy to write down."""

from __future__ import annotations

from typing import Any

from tunesmith.data import Message


class ByteTokenizer:
    """Tokens are UTF-8 bytes + 3; 1 = BOS, 2 = EOS, 0 = pad. Messages are concatenated
    between one BOS and one EOS, so expected ids are easy to write down by hand."""

    bos_id, eos_id, pad_id = 1, 2, 0

    def __init__(self, max_seq_len: int | None = None):
        self.max_seq_len = max_seq_len

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        ids = [b + 3 for b in text.encode("utf-8")]
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def tokenize_messages(
        self, messages: list[Message], add_end_tokens: bool = True
    ) -> tuple[list[int], list[bool]]:
        tokens, mask = [self.bos_id], [messages[0].masked]
        for message in messages:
            ids = self.encode(message.text_content, add_bos=False, add_eos=False)
            tokens += ids
            mask += [message.masked] * len(ids)
        if add_end_tokens:
            tokens.append(self.eos_id)
            mask.append(messages[-1].masked)
        if self.max_seq_len is not None:
            tokens, mask = tokens[: self.max_seq_len], mask[: self.max_seq_len]
        return tokens, mask

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        tokens, mask = self.tokenize_messages(sample["messages"])
        return {**sample, "tokens": tokens, "mask": mask}


def byte_ids(text: str) -> list[int]:
    return [b + 3 for b in text.encode("utf-8")]
