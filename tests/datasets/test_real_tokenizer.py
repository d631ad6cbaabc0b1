"""Builders with the real Llama 3 tokenizer: ids equal the public Llama 3 chat layout built
directly with the tiktoken library, and packing keeps every sample intact."""

from __future__ import annotations

import json

import pytest

from tunesmith import datasets as tds

BOS, START, END, EOT = 128000, 128006, 128007, 128009


@pytest.fixture(scope="module")
def llama3(assets):
    from tunesmith.models.llama3 import llama3_tokenizer

    return llama3_tokenizer(
        str(assets / "tokenizers" / "llama3" / "tokenizer.model"), max_seq_len=4096
    )


@pytest.fixture(scope="module")
def encoding(assets):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    pattern = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    )
    ranks = load_tiktoken_bpe(str(assets / "tokenizers" / "llama3" / "tokenizer.model"))
    return tiktoken.Encoding(
        "llama3-ref", pat_str=pattern, mergeable_ranks=ranks, special_tokens={}
    )


def _turn(enc, role: str, text: str) -> list[int]:
    return (
        [START] + enc.encode(role) + [END] + enc.encode("\n\n") + enc.encode(text.strip()) + [EOT]
    )


def test_alpaca_with_llama3_tokenizer(assets, llama3, encoding):
    path = assets / "torchtune_tests" / "alpaca_tiny.json"
    rows = json.loads(path.read_text())
    ds = tds.alpaca_dataset(llama3, source="json", data_files=str(path), train_on_input=False)
    for i in (0, 5):
        prompt = rows[i]["text"][: len(rows[i]["text"]) - len(rows[i]["output"])]
        user, answer = (
            _turn(encoding, "user", prompt),
            _turn(encoding, "assistant", rows[i]["output"]),
        )
        sample = ds[i]
        assert sample["tokens"][: 1 + len(user) + len(answer)] == [BOS] + user + answer
        n = 1 + len(user)
        assert sample["labels"][:n] == [-100] * n
        assert sample["labels"][n : n + len(answer)] == answer


def test_packed_alpaca_with_llama3_tokenizer(assets, llama3):
    path = str(assets / "torchtune_tests" / "alpaca_tiny.json")
    unpacked = tds.alpaca_dataset(llama3, source="json", data_files=path)
    packed = tds.alpaca_dataset(llama3, source="json", data_files=path, packed=True)
    stream = [t for i in range(len(unpacked)) for t in unpacked[i]["tokens"]]
    used = packed.packs.pack_token_offsets[1:] - packed.packs.pack_token_offsets[:-1]
    got = []
    for i in range(len(packed)):
        pack, n = packed[i], int(used[i])
        got += pack["tokens"][:n].tolist()
        assert (pack["tokens"][n:] == llama3.pad_id).all()
        assert (pack["labels"][n:] == -100).all()
    assert got == stream  # every token once, in order
    assert len(packed) < len(unpacked)
