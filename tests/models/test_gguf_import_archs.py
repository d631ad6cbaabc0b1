"""GGUF import of the architectures beyond ``llama``: Qwen2 / 2.5 (``qwen2``, q/k/v biases),
Qwen3 (``qwen3``, q/k norms, key_length), SmolLM3 (``smollm3``, NoPE every 4th layer),
Granite 3 (``granite``, multipliers) and OLMo 2 (``olmo2``, post-norms only) files written by
tunesmith's export load back as the same spec and the same weights (f32: bit for bit)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("gguf")
pytest.importorskip("tokenizers")

from tunesmith.models.builder import build_decoder  # noqa: E402
from tunesmith.models.gguf import load_gguf  # noqa: E402
from tunesmith.models.gguf_export import export_gguf, gguf_vocab  # noqa: E402
from tunesmith.models.spec import ModelSpec, RopeScaling  # noqa: E402

from .test_gguf_export import CHATML, _write_tokenizer  # noqa: E402
from .test_gguf_families import _model  # noqa: E402

_SPECS = {
    "SMOLLM3": {"num_layers": 4, "nope_layers": (3,), "tie_embeddings": True},
    "GRANITE": {"embed_multiplier": 12.0, "residual_multiplier": 0.5, "attn_scale": 0.25,
                "logits_divisor": 8.0},
    "PHI3_MINI": {"rotary_dim": 12, "tie_embeddings": True, "max_seq_len": 512,
                  "rope_scaling": RopeScaling(factor=4.0, original_max_position_embeddings=128,
                                              rope_type="longrope",
                                              long_factor=tuple(2.0 + i for i in range(6)),
                                              short_factor=tuple(1.0 + i / 8 for i in range(6)))},
    "OLMO2": {"pre_norms": False, "post_norms": True, "qk_norm": True,
              "qk_norm_across_heads": True, "norm_scale_fp32": True},
}  # fmt: skip


def _any_model(family: str) -> tuple[torch.nn.Module, ModelSpec]:
    if family not in _SPECS:
        return _model(family)
    spec = ModelSpec(family=family, vocab_size=320, num_layers=2, num_heads=4, num_kv_heads=2,
                     embed_dim=64, intermediate_dim=96, max_seq_len=128).replace(
        **_SPECS[family]
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_decoder(spec).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model, spec


@pytest.mark.parametrize(
    "family",
    ["QWEN2_5", "QWEN3", "LLAMA3_2", "MISTRAL", "SMOLLM3", "GRANITE", "OLMO2", "PHI3_MINI"],
)
def test_export_then_import_round_trips(tmp_path: Path, family: str) -> None:
    model, spec = _any_model(family)
    vocab = gguf_vocab(
        _write_tokenizer(tmp_path / "tok"), vocab_size=spec.vocab_size,
        bos_token="<|im_start|>", eos_token="<|im_end|>", chat_template=CHATML,
    )  # fmt: skip
    path = export_gguf(tmp_path / "m.gguf", model.state_dict(), spec, vocab, out_type="f32")
    got_spec, got_sd, tokenizer = load_gguf(path)
    for field in ("vocab_size", "num_layers", "num_heads", "num_kv_heads", "embed_dim",
                  "intermediate_dim", "resolved_head_dim", "rope_base", "qkv_bias", "qk_norm",
                  "tie_embeddings", "nope_layers", "embed_multiplier", "residual_multiplier",
                  "attn_scale", "logits_divisor", "pre_norms", "post_norms",
                  "qk_norm_across_heads", "rotary_dim"):  # fmt: skip
        assert getattr(got_spec, field) == getattr(spec, field), field
    if spec.rope_scaling is not None:
        got, ref = got_spec.rope_scaling, spec.rope_scaling
        for field in ("rope_type", "factor", "original_max_position_embeddings"):
            assert getattr(got, field) == getattr(ref, field), field
        assert got.long_factor == pytest.approx(ref.long_factor)
        assert got.short_factor == pytest.approx(ref.short_factor)
        assert got.cos_sin_scale == pytest.approx(ref.cos_sin_scale)
    want = {k: v for k, v in model.state_dict().items()
            if not (spec.tie_embeddings and k == "output.weight")}  # fmt: skip
    assert set(got_sd) == set(want)
    for key, value in want.items():
        assert torch.equal(got_sd[key], value.float()), key
    assert tokenizer.eos_id == vocab.eos_id


def test_unsupported_architecture_names_the_supported(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "x.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt-oss")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(
        ValueError, match="'gpt-oss' is not supported; only llama, qwen2, qwen3, smollm3"
    ):
        load_gguf(path)
