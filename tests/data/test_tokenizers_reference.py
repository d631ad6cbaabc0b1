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


def _cases(assets: Path, name: str, count: int = 46) -> list[tuple[str, list[int]]]:
    ref = assets / "tokenizers" / "reference"
    texts = (ref / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8")
    texts_list = texts.split("\n__ggml_vocab_test__\n")
    lines = (ref / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").split("\n")
    # both files end with a separator / newline: the last element is the empty remainder
    assert texts_list[-1] == "" and lines[-1] == ""
    cases = [(t, [int(x) for x in line.split()]) for t, line in zip(texts_list[:-1], lines[:-1])]
    assert len(cases) == count and sum(bool(ids) for _, ids in cases) >= count - 2
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


def _gguf_vocab(assets: Path, name: str) -> dict:
    """The metadata of ``gguf_vocab/ggml-vocab-<name>.gguf`` (a few seconds with GGUFReader)."""
    path = assets / "tokenizers" / "gguf_vocab" / f"ggml-vocab-{name}.gguf"
    if not path.is_file():
        pytest.skip(f"needs {path} (shared assets)")
    pytest.importorskip("gguf")
    from tunesmith.models.gguf import read_gguf

    return read_gguf(path)[1]


# (GGUF name, number of reference texts). Decoding gives every text back unchanged: GPT-2 and
# Qwen3.5 do not normalise (Qwen3.5 keeps decomposed accents: no NFC, unlike Qwen2), and
# Phi-3's decoder drops only the dummy-prefix space its encoder added.
@pytest.mark.parametrize(("name", "count"), [("gpt-2", 46), ("qwen35", 50), ("phi-3", 46)])
def test_gguf_vocabulary_matches_reference(assets: Path, name: str, count: int) -> None:
    from tunesmith.models.gguf import gguf_tokenizer

    tok = gguf_tokenizer(_gguf_vocab(assets, name))
    _check(
        lambda t: tok.encode(t, add_special_tokens=False).ids,
        lambda ids: tok.decode(ids, skip_special_tokens=False),
        _cases(assets, name, count),
    )


def test_gpt2_base_tokenizer_from_gguf_vocabulary(assets: Path, tmp_path: Path) -> None:
    """torchtune's ``GPT2BaseTokenizer`` (vocab.json + merges.txt) written from GPT-2's GGUF
    vocabulary reproduces the reference ids, so its regex and byte mapping are GPT-2's."""
    import json

    from tunesmith.data.tokenizers import GPT2BaseTokenizer

    meta = _gguf_vocab(assets, "gpt-2")
    tokens = meta["tokenizer.ggml.tokens"]
    (tmp_path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (tmp_path / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(meta["tokenizer.ggml.merges"]) + "\n", encoding="utf-8"
    )
    base = GPT2BaseTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    _check(lambda t: base.encode(t, False, False), base.decode, _cases(assets, "gpt-2"))


def test_special_strings_split_in_model_tokenizer_not_in_base(assets: Path) -> None:
    tok = llama3_tokenizer(str(assets / "tokenizers" / "llama3" / "tokenizer.model"))
    ids = tok.encode("a<|eot_id|>b", add_bos=False, add_eos=False)
    assert ids == [*tok.encode("a", False, False), 128009, *tok.encode("b", False, False)]
    assert 128009 not in tok.base.encode("a<|eot_id|>b", False, False)
    assert tok.decode(ids) == "ab"
    assert tok.decode(ids, skip_special_tokens=False) == "a<|eot_id|>b"


def test_phi3_family_tokenizer_matches_reference(assets: Path) -> None:
    """tunesmith's Phi-3 tokenizer (Llama 2's SentencePiece model + Phi-3's added tokens, as
    Phi-3-mini ships it) gives llama.cpp's Phi-3 reference ids for every text."""
    from tunesmith.models.phi3 import phi3_mini_tokenizer

    path = assets / "tokenizers" / "llama2" / "tokenizer.model"
    if not path.is_file():
        pytest.skip(f"needs {path} (shared assets)")
    tok = phi3_mini_tokenizer(str(path))
    _check(
        lambda t: tok.encode(t, add_bos=False, add_eos=False),
        tok.decode,
        _cases(assets, "phi-3"),
    )
