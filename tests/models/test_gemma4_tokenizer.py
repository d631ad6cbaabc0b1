"""Gemma 4 tokenizer: the vocabulary of ``ggml-vocab-gemma-4.gguf`` (shared assets) rebuilt as
a ``tokenizer.json`` reproduces llama.cpp's reference tokenizations (made with the released
HF tokenizer), and ``gemma4_tokenizer`` renders the official chat template
(``google-gemma-4-31B-it.jinja``) token for token as transformers' ``apply_chat_template``.

Slow: ``gguf.GGUFReader`` takes over a minute to parse the 262k-token / 515k-merge file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.data import Message
from tunesmith.models.gemma4 import gemma4_tokenizer

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

CHATS = [
    [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4."},
    ],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3 + 3?\n  Explain. "},
        {"role": "assistant", "content": "6, since 3 + 3 = 6."},
    ],
]


@pytest.fixture(scope="module")
def folder(assets: Path, tmp_path_factory) -> Path:
    vocab = assets / "tokenizers" / "gguf_vocab" / "ggml-vocab-gemma-4.gguf"
    template = assets / "chat_templates" / "google-gemma-4-31B-it.jinja"
    if not vocab.is_file() or not template.is_file():
        pytest.skip(f"needs {vocab} and {template} (shared assets)")
    from tunesmith.models.gguf import gguf_tokenizer_files, read_gguf

    _, metadata = read_gguf(vocab)
    directory = tmp_path_factory.mktemp("gemma4_tok")
    files = gguf_tokenizer_files(metadata)
    (directory / "tokenizer.json").write_text(files["tokenizer.json"], encoding="utf-8")
    config = json.loads(files["tokenizer_config.json"])
    config["chat_template"] = template.read_text(encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


def _cases(assets: Path) -> list[tuple[str, list[int]]]:
    ref = assets / "tokenizers" / "reference" / "ggml-vocab-gemma-4.gguf"
    texts = Path(f"{ref}.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    lines = Path(f"{ref}.out").read_text(encoding="utf-8").split("\n")
    if texts[-1] == "":  # a trailing separator leaves an empty remainder
        texts = texts[:-1]
    assert lines[-1] == "" and len(texts) == len(lines) - 1
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines[:-1])]


def test_encode_decode_equal_the_reference_tokenizations(folder: Path, assets: Path) -> None:
    tok = gemma4_tokenizer(str(folder / "tokenizer.json"))
    cases = _cases(assets)
    assert len(cases) >= 40
    failures = [
        f"{text!r}: {tok.encode(text, add_bos=False, add_eos=False)} != {ids}"
        for text, ids in cases
        if tok.encode(text, add_bos=False, add_eos=False) != ids or tok.decode(ids) != text
    ]
    assert not failures, "\n".join(failures)
    assert (tok.bos_id, tok.eos_id) == (2, 1)


@pytest.mark.parametrize("chat", CHATS, ids=["one_turn", "system_two_turns"])
def test_chat_equals_official_template(folder: Path, chat: list[dict]) -> None:
    ours = gemma4_tokenizer(str(folder / "tokenizer.json"))
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    want = hf.apply_chat_template(chat, tokenize=True, return_dict=False)
    messages = [
        Message(role=m["role"], content=m["content"], masked=m["role"] != "assistant") for m in chat
    ]
    tokens, mask = ours.tokenize_messages(messages, add_end_tokens=True)
    assert tokens == list(want)
    assert len(mask) == len(tokens)
    text = hf.apply_chat_template(chat, tokenize=False)
    assert text.startswith("<bos><|turn>") and "<turn|>" in text
    # the prompt tokens are masked (True), the answers' trained
    assert mask[0] and not all(mask)
