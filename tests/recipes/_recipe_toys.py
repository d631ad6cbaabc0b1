"""Toy pieces for recipe tests: a byte-level chat tokenizer and a tiny Llama on disk.

The tokenizer exists so recipe tests run on a fresh machine with no tokenizer files: ids
0-255 are bytes, 256 = pad, 257 = bos, 258 = eos. Chat turns are rendered as
``<role>: <content>\\n``; masked messages are not trained on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PAD, BOS, EOS = 256, 257, 258
VOCAB = 320  # a multiple of 64 so every linear layer quantizes to NF4 (QLoRA)


class ByteChatTokenizer:
    """The ``ModelTokenizer`` interface over raw UTF-8 bytes."""

    pad_id, bos_id, eos_id = PAD, BOS, EOS

    def __init__(self, max_seq_len: int | None = None) -> None:
        self.max_seq_len = max_seq_len
        self.stop_tokens = [EOS]

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> list[int]:
        return [BOS] * add_bos + list(text.encode("utf-8")) + [EOS] * add_eos

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def tokenize_messages(
        self, messages: list[Any], add_end_tokens: bool = True
    ) -> tuple[list[int], list[bool]]:
        tokens, mask = [BOS], [True]
        for i, m in enumerate(messages):
            last = i == len(messages) - 1
            text = f"{m.role}: {m.text_content}"
            if not last or add_end_tokens:
                text += "\n"
            ids = list(text.encode("utf-8"))
            tokens += ids
            mask += [m.masked] * len(ids)
        if add_end_tokens:
            tokens.append(EOS)
            mask.append(messages[-1].masked)
        if self.max_seq_len is not None:
            tokens, mask = tokens[: self.max_seq_len], mask[: self.max_seq_len]
        return tokens, mask

    def __call__(self, sample: dict[str, Any], inference: bool = False) -> dict[str, Any]:
        tokens, mask = self.tokenize_messages(sample.pop("messages"), add_end_tokens=not inference)
        return {**sample, "tokens": tokens, "mask": mask}


def write_tiny_llama(
    folder: Path,
    seed: int = 0,
    vocab_size: int = VOCAB,
    tied: bool = False,
    hidden_size: int = 64,
) -> Path:
    """A random 2-layer Llama (HF format); the default vocabulary fits :class:`ByteChatTokenizer`
    (``vocab_size=128256, tied=True`` is a tiny Llama 3.2 for the real Llama 3 tokenizer).
    ``hidden_size=256`` gives NF4 weights that FSDP2 can shard across 2 ranks (each has at
    least two double-quantization groups of 256 blocks of 64)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tied,
        initializer_range=0.2,  # logits large enough for adapters on frozen layers to matter
    )
    transformers.LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder


def write_instruct_data(path: Path, n: int = 720) -> Path:
    """Alpaca-style rows with a learnable pattern (answer = the reversed word, upper-cased)."""
    words = ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "ocean", "robot", "sugar",
             "maple", "crane", "delta", "ember", "fable", "giant"]  # fmt: skip
    rows = []
    for i in range(n):
        w = words[i % len(words)] + words[(i * 7) % len(words)][: 1 + i % 3]
        rows.append({"instruction": "Reverse and shout.", "input": w, "output": w[::-1].upper()})
    path.write_text(json.dumps(rows))
    return path
