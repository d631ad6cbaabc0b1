"""GGUF export of the SentencePiece families: Gemma (``gemma``), Gemma 2 (``gemma2``), Gemma 3
(``gemma3``), Phi-3 (``phi3``, fused qkv / gate-up, longrope factors) and Llama 2 / Mistral
(``llama``), vocabularies as ``llama`` SPM.

Tiny random transformers models are saved as Hugging Face folders, exported with
``export_hf_folder_to_gguf`` and run by llama.cpp (llama-cpp-python): its logits equal
transformers' (sliding windows, soft-caps, (1 + w) norms, embedding scaling included). The
Phi-3 vocabulary is checked against llama.cpp's own ``ggml-vocab-phi-3.gguf`` and its
tokenizations of llama.cpp's reference texts (ids made by the vendor's HF tokenizer)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
pytest.importorskip("sentencepiece")
transformers = pytest.importorskip("transformers")

from tunesmith.models.gguf_export import export_hf_folder_to_gguf, spm_vocab  # noqa: E402

ASSETS = Path(__file__).resolve().parents[2] / ".." / "shared" / "assets"
TOY_SPM = ASSETS / "torchtune_tests" / "m.model"  # 2,000 pieces
LLAMA2_SPM = ASSETS / "tokenizers" / "llama2" / "tokenizer.model"
PHI3_VOCAB = ASSETS / "tokenizers" / "gguf_vocab" / "ggml-vocab-phi-3.gguf"
TOKENS = [1, 5, 17, 99, 230, 7, 1024, 3, 8, 600, 42, 1999, 11, 12, 300, 77, 5, 9, 400, 18]


def _need(*paths: Path) -> None:
    for p in paths:
        if not p.is_file():
            pytest.skip(f"needs {p} (shared test assets, see ../shared/assets/README.md)")


def _folder(tmp_path: Path, config: object, cls: type) -> Path:
    torch.manual_seed(0)
    model = cls(config).eval()
    with torch.no_grad():  # larger than the init's 0.02 so that logits differ visibly
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0.0, 0.08)
            else:
                p.uniform_(-0.5, 0.5)
    folder = tmp_path / "hf"
    model.save_pretrained(folder)
    shutil.copy(TOY_SPM, folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    )
    return folder


def _llama_cpp_logits(path: Path, tokens: list[int]) -> np.ndarray:
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=256, n_threads=2, logits_all=True, verbose=False
    )
    llm.eval(tokens)
    out = np.array(llm.scores[: len(tokens)])
    del llm
    return out


def _check(folder: Path, tmp_path: Path, out_type: str = "f32") -> gguf.GGUFReader:
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        want = hf(torch.tensor([TOKENS])).logits[0].numpy()
    path = export_hf_folder_to_gguf(folder, tmp_path / f"m.{out_type}.gguf", out_type=out_type)
    got = _llama_cpp_logits(path, TOKENS)
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 2e-3 * scale, np.abs(got - want).max() / scale
    assert (got.argmax(-1) == want.argmax(-1)).all()
    return gguf.GGUFReader(str(path))


def _field(reader: gguf.GGUFReader, key: str) -> object:
    return reader.fields[key].contents()


def test_gemma2_logits_equal_transformers(tmp_path: Path) -> None:
    _need(TOY_SPM)
    config = transformers.Gemma2Config(
        vocab_size=2000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
        sliding_window=6, max_position_embeddings=128, attn_logit_softcapping=5.0,
        final_logit_softcapping=3.0,
    )  # fmt: skip
    reader = _check(_folder(tmp_path, config, transformers.Gemma2ForCausalLM), tmp_path)
    assert _field(reader, "general.architecture") == "gemma2"
    assert _field(reader, "gemma2.attention.sliding_window") == 6
    assert _field(reader, "gemma2.attn_logit_softcapping") == 5.0
    assert _field(reader, "tokenizer.ggml.model") == "llama"
    assert _field(reader, "tokenizer.ggml.add_space_prefix") is False
    names = {t.name for t in reader.tensors}
    assert {"blk.1.post_attention_norm.weight", "blk.1.post_ffw_norm.weight"} <= names
    assert "output.weight" not in names  # tied


def test_gemma_logits_equal_transformers(tmp_path: Path) -> None:
    _need(TOY_SPM)
    config = transformers.GemmaConfig(
        vocab_size=2000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=128,
    )  # fmt: skip
    reader = _check(_folder(tmp_path, config, transformers.GemmaForCausalLM), tmp_path)
    assert _field(reader, "general.architecture") == "gemma"


def test_gemma3_logits_equal_transformers(tmp_path: Path) -> None:
    _need(TOY_SPM)
    config = transformers.Gemma3TextConfig(
        vocab_size=2000, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
        sliding_window=6, max_position_embeddings=128,
    )  # fmt: skip
    config.rope_parameters["full_attention"] = {
        "rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0,
    }  # fmt: skip
    reader = _check(_folder(tmp_path, config, transformers.Gemma3ForCausalLM), tmp_path)
    assert _field(reader, "general.architecture") == "gemma3"
    assert _field(reader, "gemma3.rope.scaling.factor") == 8.0
    assert "blk.0.attn_q_norm.weight" in {t.name for t in reader.tensors}


def test_llama_with_sentencepiece_logits_equal_transformers(tmp_path: Path) -> None:
    """Llama 2 / Mistral v0.1 style: the ``llama`` architecture with an SPM vocabulary."""
    _need(TOY_SPM)
    config = transformers.LlamaConfig(
        vocab_size=2000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    reader = _check(_folder(tmp_path, config, transformers.LlamaForCausalLM), tmp_path)
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "tokenizer.ggml.model") == "llama"
    assert "tokenizer.ggml.add_space_prefix" not in reader.fields  # llama.cpp's default: true


@pytest.mark.parametrize("longrope", [False, True])
def test_phi3_logits_equal_transformers(tmp_path: Path, longrope: bool) -> None:
    _need(TOY_SPM)
    extra: dict[str, object] = {}
    if longrope:  # llama.cpp picks the short factors: its context (256) <= the original
        rng = np.random.default_rng(0)
        extra = dict(max_position_embeddings=1024, original_max_position_embeddings=256,
                     rope_scaling={"type": "longrope",
                                   "short_factor": (1 + rng.random(8)).tolist(),
                                   "long_factor": (2 + rng.random(8)).tolist()})  # fmt: skip
    config = transformers.Phi3Config(
        vocab_size=2000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, **({"max_position_embeddings": 128} | extra),
    )  # fmt: skip
    reader = _check(_folder(tmp_path, config, transformers.Phi3ForCausalLM), tmp_path)
    assert _field(reader, "general.architecture") == "phi3"
    names = {t.name for t in reader.tensors}
    assert {"blk.0.attn_qkv.weight", "blk.0.ffn_up.weight"} <= names
    assert not {"blk.0.attn_q.weight", "blk.0.ffn_gate.weight"} & names
    assert ("rope_factors_long.weight" in names) is longrope


@pytest.mark.parametrize("out_type", ["q8_0", "q4_0"])
def test_gemma2_quantized_is_llama_cpps_own(tmp_path: Path, out_type: str) -> None:
    """Our quantized Gemma 2 file is llama.cpp's quantizer's output for the same f32 weights
    (tensor types and bytes; the (1 + w) norms stay F32), and runs close to transformers."""
    _need(TOY_SPM)
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (the llamacpp extra)")
    from tunesmith.models.gguf_export import llama_cpp_quantize

    config = transformers.Gemma2Config(
        vocab_size=2000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16,
        sliding_window=6, max_position_embeddings=128,
    )  # fmt: skip
    folder = _folder(tmp_path, config, transformers.Gemma2ForCausalLM)
    ours = export_hf_folder_to_gguf(folder, tmp_path / f"m.{out_type}.gguf", out_type=out_type)
    f32 = export_hf_folder_to_gguf(folder, tmp_path / "m.f32.gguf", out_type="f32")
    theirs = llama_cpp_quantize(f32, tmp_path / f"llama_cpp.{out_type}.gguf", out_type)

    def tensors(path: Path) -> dict[str, tuple[int, bytes]]:
        reader = gguf.GGUFReader(str(path))
        return {t.name: (int(t.tensor_type), np.asarray(t.data).tobytes()) for t in reader.tensors}

    assert tensors(ours) == tensors(theirs)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        want = hf(torch.tensor([TOKENS])).logits[0].numpy()
    got = _llama_cpp_logits(ours, TOKENS)
    assert np.abs(got - want).max() <= (0.05 if out_type == "q8_0" else 0.3) * np.abs(want).max()


def _phi3_reference() -> tuple[dict[str, object], dict[int, tuple[str, bool]]]:
    reader = gguf.GGUFReader(str(PHI3_VOCAB))
    meta = {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    # Phi-3's added tokens (its tokenizer_config.json): the reference's CONTROL / USER_DEFINED
    # entries that override or extend the Llama 2 pieces (ids 0-2 and 32000-32063)
    added = {i: (tokens[i], types[i] == 3) for i in range(len(tokens))
             if (i < 3 or i >= 32000) and types[i] in (3, 4)}  # fmt: skip
    return meta, added


def test_phi3_vocabulary_equals_llama_cpp_reference() -> None:
    _need(LLAMA2_SPM, PHI3_VOCAB)
    meta, added = _phi3_reference()
    vocab = spm_vocab(
        LLAMA2_SPM, vocab_size=32064, added_tokens=added, bos_token="<s>",
        eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token="<unk>",
    )  # fmt: skip
    assert vocab.tokens == meta["tokenizer.ggml.tokens"]
    assert vocab.scores == pytest.approx(meta["tokenizer.ggml.scores"])
    ref_types = meta["tokenizer.ggml.token_type"]
    real = [i for i, t in enumerate(vocab.tokens) if not t.startswith("[PAD")]
    assert [vocab.token_types[i] for i in real] == [ref_types[i] for i in real]
    assert (vocab.bos_id, vocab.eos_id, vocab.unk_id) == (
        meta["tokenizer.ggml.bos_token_id"],
        meta["tokenizer.ggml.eos_token_id"],
        meta["tokenizer.ggml.unknown_token_id"],
    )


def test_phi3_export_tokenizes_as_reference(tmp_path: Path) -> None:
    """A Phi-3 GGUF we write, tokenized by llama.cpp: the vendor's ids on llama.cpp's
    reference texts."""
    _need(LLAMA2_SPM, PHI3_VOCAB)
    llama_cpp = pytest.importorskip("llama_cpp")
    from tunesmith.models.builder import build_decoder
    from tunesmith.models.gguf_export import export_gguf
    from tunesmith.models.spec import ModelSpec

    _, added = _phi3_reference()
    vocab = spm_vocab(LLAMA2_SPM, vocab_size=32064, added_tokens=added, bos_token="<s>",
                      eos_token="<|endoftext|>")  # fmt: skip
    spec = ModelSpec(family="PHI3_MINI", vocab_size=32064, num_layers=1, num_heads=2,
                     num_kv_heads=2, embed_dim=32, intermediate_dim=64, max_seq_len=64)  # fmt: skip
    path = export_gguf(tmp_path / "phi3.gguf", build_decoder(spec).state_dict(), spec, vocab)
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    ref = ASSETS / "tokenizers" / "reference" / "ggml-vocab-phi-3.gguf"
    texts = Path(f"{ref}.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    outs = Path(f"{ref}.out").read_text(encoding="utf-8").split("\n")
    for text, ids in zip(texts, outs, strict=False):
        want = [int(t) for t in ids.split()]
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == want, text
