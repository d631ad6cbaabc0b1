"""Tokenizers against llama.cpp's reference tokenizations (produced by the vendors' HF tokenizers).

``reference/ggml-vocab-<name>.gguf.inp`` holds texts separated by
``\\n__ggml_vocab_test__\\n``; ``.out`` one line of expected ids per text. The ids were made
with ``encode(text, add_special_tokens=False)``: no BOS/EOS; for Llama 2 (SentencePiece)
they include the dummy-prefix space piece that SentencePiece puts before every text.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest

from tunesmith.data.tokenizers import (
    ByteLevelBPEBaseTokenizer,
    HuggingFaceBaseTokenizer,
    SentencePieceBaseTokenizer,
)
from tunesmith.models.llama2 import llama2_tokenizer
from tunesmith.models.llama3 import llama3_tokenizer
from tunesmith.models.qwen2 import qwen2_tokenizer


def _cases(assets: Path, name: str) -> list[tuple[str, list[int]]]:
    ref = assets / "tokenizers" / "reference"
    texts = (ref / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8")
    texts_list = texts.split("\n__ggml_vocab_test__\n")
    lines = (ref / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").split("\n")
    # both files end with a separator / newline: the last element is the empty remainder
    assert texts_list[-1] == "" and lines[-1] == ""
    cases = [(t, [int(x) for x in line.split()]) for t, line in zip(texts_list[:-1], lines[:-1])]
    assert len(cases) == 46 and sum(bool(ids) for _, ids in cases) >= 44
    return cases


def _check(encode, decode, cases, normalise=lambda s: s) -> None:
    failures = []
    for text, expected in cases:
        got = encode(text)
        if got != expected:
            failures.append(f"encode {text!r}: {got} != {expected}")
        elif decode(expected) != normalise(text):
            failures.append(f"decode {expected}: {decode(expected)!r} != {text!r}")
    assert not failures, "\n".join(failures)


def test_llama3_tiktoken_matches_reference(assets: Path) -> None:
    tok = llama3_tokenizer(str(assets / "tokenizers" / "llama3" / "tokenizer.model"))
    _check(
        lambda t: tok.encode(t, add_bos=False, add_eos=False),
        tok.decode,
        _cases(assets, "llama-bpe"),
    )
    assert tok.encode("hi") == [tok.bos_id, *tok.encode("hi", False, False), tok.eos_id]
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (128000, 128001, 128004)
    assert tok.stop_tokens == [128001, 128008, 128009]


def test_llama3_tokenizer_json_matches_reference(assets: Path) -> None:
    base = HuggingFaceBaseTokenizer(
        assets / "tokenizers" / "llama3_hf" / "tokenizer.json",
        tokenizer_config_json_path=assets / "tokenizers" / "llama3_hf" / "tokenizer_config.json",
    )
    assert (base.bos_id, base.eos_id) == (128000, 128001)
    _check(lambda t: base.encode(t, False, False), base.decode, _cases(assets, "llama-bpe"))


def test_llama2_sentencepiece_matches_reference(assets: Path) -> None:
    path = assets / "tokenizers" / "llama2" / "tokenizer.model"
    tok = llama2_tokenizer(str(path))
    _check(
        lambda t: tok.encode(t, add_bos=False, add_eos=False),
        tok.decode,
        _cases(assets, "llama-spm"),
    )
    base = SentencePieceBaseTokenizer(path)
    assert (base.bos_id, base.eos_id, base.vocab_size) == (1, 2, 32000)
    # a continuation has no dummy-prefix space: "Hello" + " world" == "Hello world"
    joined = base.encode("Hello", False, False) + base.encode(
        " world", False, False, trim_leading_whitespace=True
    )
    assert joined == base.encode("Hello world", False, False)
    # torchtune's prefix= argument: another text to continue from gives the same continuation
    again = base.encode(" world", False, False, trim_leading_whitespace=True, prefix="pre")
    assert base.encode("Hello", False, False) + again == base.encode("Hello world", False, False)


@pytest.mark.parametrize("source", ["vocab_merges", "tokenizer_json", "model_tokenizer"])
def test_qwen2_bpe_matches_reference(assets: Path, source: str) -> None:
    folder = assets / "tokenizers" / "qwen2"
    if source == "vocab_merges":
        base = ByteLevelBPEBaseTokenizer(folder / "vocab.json", folder / "merges.txt")
        encode, decode = (lambda t: base.encode(t, False, False)), base.decode
    elif source == "tokenizer_json":
        base = HuggingFaceBaseTokenizer(
            folder / "tokenizer.json", tokenizer_config_json_path=folder / "tokenizer_config.json"
        )
        encode, decode = (lambda t: base.encode(t, False, False)), base.decode
    else:
        tok = qwen2_tokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
        assert tok.bos_id is None and tok.eos_id == 151643
        assert tok.encode("hi", add_bos=True, add_eos=True)[-1] == 151643
        encode, decode = (lambda t: tok.encode(t, add_bos=False, add_eos=False)), tok.decode
    # Qwen2 normalises to NFC before tokenizing, so decoding gives the NFC form back
    _check(encode, decode, _cases(assets, "qwen2"), lambda s: unicodedata.normalize("NFC", s))


@pytest.mark.skip(
    reason="GPT-2 cases need GPT-2's vocab.json/merges.txt (50,257 tokens); no file in "
    "../shared/assets holds them (the byte-level BPE files there are Qwen2's, SmolLM2's and "
    "torchtune's 2k toy vocabularies). GPT2BaseTokenizer shares ByteLevelBPEBaseTokenizer, "
    "which is checked on the Qwen2 cases."
)
def test_gpt2_matches_reference() -> None:  # pragma: no cover - documents the gap
    pass


def test_special_strings_split_in_model_tokenizer_not_in_base(assets: Path) -> None:
    tok = llama3_tokenizer(str(assets / "tokenizers" / "llama3" / "tokenizer.model"))
    ids = tok.encode("a<|eot_id|>b", add_bos=False, add_eos=False)
    assert ids == [*tok.encode("a", False, False), 128009, *tok.encode("b", False, False)]
    assert 128009 not in tok.base.encode("a<|eot_id|>b", False, False)
    assert tok.decode(ids) == "ab"
    assert tok.decode(ids, skip_special_tokens=False) == "a<|eot_id|>b"
