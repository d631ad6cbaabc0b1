"""GGUF LoRA files (llama.cpp's ``convert_lora_to_gguf.py`` layout) from native and PEFT
adapters, read back with the ``gguf`` package's ``GGUFReader``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from tunesmith.models.convert_weights import permute_meta_to_hf  # noqa: E402
from tunesmith.models.gguf_lora import export_lora_gguf, export_peft_adapter_to_gguf  # noqa: E402
from tunesmith.models.peft_format import save_peft_adapter  # noqa: E402
from tunesmith.models.spec import ModelSpec  # noqa: E402

RANK = 4


def _spec(family: str = "LLAMA3_2") -> ModelSpec:
    return ModelSpec(  # type: ignore[arg-type]
        family=family, vocab_size=320, num_layers=2, num_heads=4, num_kv_heads=2,
        embed_dim=64, intermediate_dim=96, max_seq_len=128, tie_embeddings=True,
        qkv_bias=family.startswith("QWEN2"),
    )  # fmt: skip


def _adapter(spec: ModelSpec) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    kv = spec.num_kv_heads * spec.resolved_head_dim
    shapes = {"attn.q_proj": (64, 64), "attn.k_proj": (kv, 64), "attn.v_proj": (kv, 64)}
    shapes |= {"attn.output_proj": (64, 64), "mlp.w1": (96, 64), "mlp.w2": (64, 96)}
    out = {}
    for i in range(spec.num_layers):
        for module, (n_out, n_in) in shapes.items():
            out[f"layers.{i}.{module}.lora_a.weight"] = torch.randn(RANK, n_in, generator=g)
            out[f"layers.{i}.{module}.lora_b.weight"] = torch.randn(n_out, RANK, generator=g)
    return out


def _read(path: Path) -> tuple[object, dict[str, torch.Tensor]]:
    reader = gguf.GGUFReader(str(path))
    tensors = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        data = gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)
        tensors[t.name] = torch.from_numpy(data.astype(np.float32))
    return reader, tensors


def _field(reader: object, key: str) -> object:
    f = reader.fields[key]  # type: ignore[attr-defined]
    if f.types and f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode()
    return f.parts[f.data[0]].tolist()[0]


@pytest.mark.parametrize("family,arch", [("LLAMA3_2", "llama"), ("QWEN2_5", "qwen2")])
def test_lora_gguf_layout_and_delta(tmp_path: Path, family: str, arch: str) -> None:
    spec = _spec(family)
    adapter = _adapter(spec)
    path = export_lora_gguf(tmp_path / "a.gguf", adapter, spec, alpha=8.0, out_type="f32")
    reader, tensors = _read(path)
    assert _field(reader, "general.architecture") == arch
    assert _field(reader, "general.type") == "adapter"
    assert _field(reader, "adapter.type") == "lora"
    assert _field(reader, "adapter.lora.alpha") == 8.0
    assert len(tensors) == len(adapter)
    a = tensors["blk.1.ffn_down.weight.lora_a"]
    assert a.shape == (RANK, 96) and torch.equal(a, adapter["layers.1.mlp.w2.lora_a.weight"])
    for name, proj, heads in (("attn_q", "q_proj", 4), ("attn_k", "k_proj", 2)):
        b = tensors[f"blk.0.{name}.weight.lora_b"]
        if arch == "llama":  # B's rows follow the base weight's Meta q/k order
            b = permute_meta_to_hf(b, heads, spec.resolved_head_dim)
        assert torch.equal(b, adapter[f"layers.0.attn.{proj}.lora_b.weight"])
    assert "blk.0.attn_output.weight.lora_b" in tensors
    assert "blk.0.ffn_gate.weight.lora_a" in tensors


def test_peft_folder_to_gguf_and_errors(tmp_path: Path) -> None:
    spec = _spec()
    adapter = _adapter(spec)
    hf_config = {
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 320,
        "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
        "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
    }  # fmt: skip
    folder = tmp_path / "adapter"
    save_peft_adapter(
        folder, adapter, model_type="LLAMA3", rank=RANK, alpha=16, hf_config=hf_config
    )
    path = export_peft_adapter_to_gguf(folder, hf_config, tmp_path / "a.f16.gguf")
    reader, tensors = _read(path)
    assert _field(reader, "adapter.lora.alpha") == 16.0
    want = adapter["layers.1.mlp.w1.lora_a.weight"].half().float()
    assert torch.equal(tensors["blk.1.ffn_gate.weight.lora_a"], want)
    with pytest.raises(FileExistsError, match="nothing is overwritten"):
        export_peft_adapter_to_gguf(folder, hf_config, path)
    dora = {**adapter, "layers.0.attn.q_proj.magnitude": torch.ones(64)}
    with pytest.raises(ValueError, match="DoRA"):
        export_lora_gguf(tmp_path / "d.gguf", dora, spec, alpha=8.0)
    with pytest.raises(ValueError, match="out_type"):
        export_lora_gguf(tmp_path / "d.gguf", adapter, spec, alpha=8.0, out_type="q4_0")
