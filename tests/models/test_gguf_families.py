"""GGUF export of the byte-level BPE text families (llama, qwen2, qwen3 architectures):
tiny random models written with ``export_gguf`` and read back with the ``gguf`` package's own
``GGUFReader``; metadata as llama.cpp reads it, tensors dequantized by ``gguf.quants``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
pytest.importorskip("tokenizers")

from tunesmith.models.builder import build_decoder  # noqa: E402
from tunesmith.models.convert_weights import permute_meta_to_hf  # noqa: E402
from tunesmith.models.gguf_export import GGUF_TYPES, export_gguf, gguf_vocab  # noqa: E402
from tunesmith.models.spec import ModelSpec  # noqa: E402

from .test_gguf_export import CHATML, _write_tokenizer  # noqa: E402

# family -> (spec overrides, llama.cpp architecture)
FAMILIES = {
    "LLAMA3_2": ({"tie_embeddings": True}, "llama"),
    "CODE_LLAMA2": ({}, "llama"),
    "MISTRAL": ({}, "llama"),
    "SMOLLM2": ({"tie_embeddings": True}, "llama"),
    "QWEN2_5": ({"qkv_bias": True, "tie_embeddings": True}, "qwen2"),
    "QWEN3": ({"qk_norm": True, "head_dim": 32}, "qwen3"),
}


def _model(family: str) -> tuple[torch.nn.Module, ModelSpec]:
    over, _ = FAMILIES[family]
    spec = ModelSpec(  # type: ignore[arg-type]
        family=family,
        vocab_size=320,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        embed_dim=64,
        intermediate_dim=96,
        max_seq_len=128,
        rope_base=10_000.0,
        **over,
    )
    torch.manual_seed(0)
    model = build_decoder(spec).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model, spec


def _native_name(gguf_name: str) -> str:
    from tunesmith.models._gguf_arch import _LAYER_NAMES, _TOP_NAMES

    if gguf_name.startswith("blk."):
        _, i, rest = gguf_name.split(".", 2)
        return f"layers.{i}." + {v: k for k, v in _LAYER_NAMES.items()}[rest]
    return {v: k for k, v in _TOP_NAMES.items()}[gguf_name]


@pytest.mark.parametrize("out_type", ["f16", "q8_0", "q4_0"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_tensors_and_metadata_read_back(tmp_path: Path, family: str, out_type: str) -> None:
    model, spec = _model(family)
    arch = FAMILIES[family][1]
    vocab = gguf_vocab(
        _write_tokenizer(tmp_path / "tok"),
        vocab_size=spec.vocab_size,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML,
    )
    path = export_gguf(tmp_path / "m.gguf", model.state_dict(), spec, vocab, out_type=out_type)
    reader = gguf.GGUFReader(str(path))

    def field(key: str) -> object:
        f = reader.fields[key]
        if f.types and f.types[0] == gguf.GGUFValueType.STRING:
            return bytes(f.parts[f.data[0]]).decode()
        return f.parts[f.data[0]].tolist()[0]

    assert field("general.architecture") == arch
    assert field(f"{arch}.block_count") == 2
    assert field(f"{arch}.attention.head_count_kv") == 2
    assert field(f"{arch}.feed_forward_length") == 96
    assert field(f"{arch}.rope.freq_base") == 10_000.0
    assert field("tokenizer.chat_template") == CHATML
    assert field("tokenizer.ggml.eos_token_id") == vocab.eos_id
    if family == "QWEN3":
        assert field("qwen3.attention.key_length") == 32
    sd = model.state_dict()
    names = {t.name for t in reader.tensors}
    assert ("output.weight" in names) is not spec.tie_embeddings
    assert ("blk.0.attn_q.bias" in names) is spec.qkv_bias
    assert ("blk.0.attn_q_norm.weight" in names) is spec.qk_norm
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        got = torch.from_numpy(
            gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
        )
        want = sd[_native_name(t.name)].float()
        if arch == "llama" and ".attn_q." in t.name:  # llama stores Meta's q/k row order
            got = permute_meta_to_hf(got, spec.num_heads, spec.resolved_head_dim)
        elif arch == "llama" and ".attn_k." in t.name:
            got = permute_meta_to_hf(got, spec.num_kv_heads, spec.resolved_head_dim)
        if t.tensor_type == gguf.GGMLQuantizationType.F32:
            assert torch.equal(got, want), t.name
        elif t.tensor_type == gguf.GGMLQuantizationType.F16:
            assert torch.equal(got, want.half().float()), t.name
        else:  # per block of 32, step d = absmax / 127 (q8_0) or absmax / 8 (q4_0):
            # |error| <= d / 2, and <= d for q4_0 (+8 d clips to its top level 7 d)
            bound = 0.51 / 127 if out_type == "q8_0" else 1.01 / 8
            absmax = want.reshape(-1, 32).abs().amax(-1, keepdim=True)
            err = (got - want).reshape(-1, 32).abs()
            assert bool((err <= absmax * bound + 1e-4).all()), t.name


def test_every_type_is_writable() -> None:
    from tunesmith.models._gguf_arch import encode, file_type

    a = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    for out_type in GGUF_TYPES:
        encode(a, out_type)
        file_type(out_type)


def test_unsupported_families_say_why(tmp_path: Path) -> None:
    vocab = gguf_vocab(_write_tokenizer(tmp_path / "tok"), vocab_size=320)
    spec = ModelSpec(  # type: ignore[arg-type]
        family="GEMMA4", vocab_size=320, num_layers=1, num_heads=4, num_kv_heads=2,
        embed_dim=64, intermediate_dim=96, max_seq_len=128,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"does not write family GEMMA4.*olmo2 \(OLMO2, OLMO3\)"):
        export_gguf(tmp_path / "x.gguf", {}, spec, vocab)
    gemma2_no_post_norms = ModelSpec(  # type: ignore[arg-type]
        family="GEMMA2", vocab_size=320, num_layers=2, num_heads=4, num_kv_heads=2,
        embed_dim=64, intermediate_dim=96, max_seq_len=128, activation="gelu_tanh",
        norm_offset=True, embed_scale=True, query_pre_attn_scalar=32.0,
    )  # fmt: skip
    with pytest.raises(ValueError, match="'gemma2'.*post-norms.*query_pre_attn_scalar=32.0"):
        export_gguf(tmp_path / "x.gguf", {}, gemma2_no_post_norms, vocab)
    qwen2_with_qk_norm = ModelSpec(  # type: ignore[arg-type]
        family="QWEN2", vocab_size=320, num_layers=1, num_heads=4, num_kv_heads=2,
        embed_dim=64, intermediate_dim=96, max_seq_len=128, qk_norm=True,
    )  # fmt: skip
    with pytest.raises(ValueError, match="'qwen2' architecture, which has no qk_norm"):
        export_gguf(tmp_path / "x.gguf", {}, qwen2_with_qk_norm, vocab)
