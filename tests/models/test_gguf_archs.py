"""GGUF export of the architectures beyond Llama / Qwen / Gemma / Phi-3 mini that llama.cpp
runs with its own graphs: Phi-4-mini (``phi3`` with partial rotary and longrope factors, tied
embeddings), SmolLM3 (``smollm3``: every 4th layer without RoPE), OLMo 2 (``olmo2``: post-norms
only, q/k RMS-normed over all heads), OLMo 3 (``olmo2`` with 3 of every 4 layers sliding),
Granite 3 and the dense Granite 4.0 (``granite``: embedding / residual / attention multipliers,
logits scaling; Granite 4.0 without RoPE), YaRN, Ministral 3 (``mistral3``, also from its
multimodal folder), Mistral Small 3 (``llama``), gpt-oss (``gpt-oss``) and Llama 4 text
(``llama4``).

Tiny random transformers models are saved as Hugging Face folders, exported with
``export_hf_folder_to_gguf`` (f32 and f16) and run by llama.cpp (llama-cpp-python): its
logits and argmax tokens equal transformers'."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("llama_cpp", reason="needs llama-cpp-python to run the exported GGUFs")
transformers = pytest.importorskip("transformers")

from tunesmith.models.gguf_export import export_hf_folder_to_gguf  # noqa: E402

from .test_gguf_sentencepiece import (  # noqa: E402
    TOKENS,
    TOY_SPM,
    _field,
    _folder,
    _need,
)

gguf = pytest.importorskip("gguf")
# max |llama.cpp - transformers| / max |transformers| logit: f32 agrees to rounding (a wrong
# RoPE layout or a missing multiplier gives 1e-4 and more), f16 to its weights' rounding
_TOLERANCE = {"f32": 3e-5, "f16": 2e-3}

_COMMON: dict[str, Any] = dict(
    vocab_size=2000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    pad_token_id=0, bos_token_id=1, eos_token_id=2,
)  # fmt: skip
_GRANITE: dict[str, Any] = dict(
    embedding_multiplier=12.0, residual_multiplier=0.5, attention_multiplier=0.5,
    logits_scaling=8.0, tie_word_embeddings=True,
)  # fmt: skip


def _llama_cpp_logits(path: Path, tokens: list[int]) -> np.ndarray:
    """llama.cpp's logits ``[len(tokens), vocab]``, its KV cache in f32 (its default f16
    cache rounds keys / values: ~1e-4 of the logits)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=2, logits_all=True,
                          type_k=0, type_v=0, verbose=False)  # fmt: skip
    llm.eval(tokens)
    out = np.array(llm.scores[: len(tokens)])
    del llm
    return out


def _check(folder: Path, tmp_path: Path, out_type: str = "f32", cls: Any = None) -> Any:
    """Export ``folder`` as ``out_type``; llama.cpp's logits on TOKENS equal transformers'
    (``cls``, default AutoModelForCausalLM) and so do the argmax tokens. Returns the file's
    ``GGUFReader``."""
    cls = cls or transformers.AutoModelForCausalLM
    hf = cls.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        want = hf(torch.tensor([TOKENS])).logits[0].numpy()
    path = export_hf_folder_to_gguf(folder, tmp_path / f"m.{out_type}.gguf", out_type=out_type)
    got = _llama_cpp_logits(path, TOKENS)
    error = np.abs(got - want).max() / np.abs(want).max()
    assert error <= _TOLERANCE[out_type], error
    assert (got.argmax(-1) == want.argmax(-1)).all()
    return gguf.GGUFReader(str(path))


def _tensors(reader: Any) -> set[str]:
    return {t.name for t in reader.tensors}


@pytest.mark.parametrize("out_type", ["f32", "f16"])
def test_phi4_mini_logits_equal_transformers(tmp_path: Path, out_type: str) -> None:
    """Phi-4-mini: 12 of 16 head features rotated (rope.dimension_count 12), 6 longrope
    factors each (llama.cpp's context 256 <= the original 256: the short ones act), tied."""
    _need(TOY_SPM)
    rng = np.random.default_rng(0)
    config = transformers.Phi3Config(
        **{**_COMMON, "max_position_embeddings": 1024}, partial_rotary_factor=0.75,
        original_max_position_embeddings=256, tie_word_embeddings=True,
        rope_scaling={"type": "longrope", "short_factor": (1 + rng.random(6)).tolist(),
                      "long_factor": (2 + rng.random(6)).tolist()},
    )  # fmt: skip
    folder = _folder(tmp_path, config, transformers.Phi3ForCausalLM)
    reader = _check(folder, tmp_path, out_type)
    assert _field(reader, "general.architecture") == "phi3"
    assert _field(reader, "phi3.rope.dimension_count") == 12
    names = _tensors(reader)
    assert "output.weight" not in names
    factors = {t.name: t.data for t in reader.tensors if t.name.startswith("rope_factors")}
    assert {n: a.shape for n, a in factors.items()} == {
        "rope_factors_long.weight": (6,),
        "rope_factors_short.weight": (6,),
    }


def test_smollm3_logits_equal_transformers(tmp_path: Path) -> None:
    """SmolLM3: layer 3 of 4 without RoPE (llama.cpp's fixed every-4th NoPE pattern)."""
    _need(TOY_SPM)
    config = transformers.SmolLM3Config(**{**_COMMON, "num_hidden_layers": 4})
    assert config.no_rope_layers == [1, 1, 1, 0]
    reader = _check(_folder(tmp_path, config, transformers.SmolLM3ForCausalLM), tmp_path)
    assert _field(reader, "general.architecture") == "smollm3"


def test_smollm3_other_nope_pattern_is_refused(tmp_path: Path) -> None:
    from tunesmith.models._gguf_arch import gguf_arch
    from tunesmith.models.convert_weights import spec_from_hf_config

    config = transformers.SmolLM3Config(**{**_COMMON, "num_hidden_layers": 4},
                                        no_rope_layers=[1, 0, 1, 1])  # fmt: skip
    with pytest.raises(ValueError, match=r"'smollm3'.*NoPE layers \[1\].*every 4th layer"):
        gguf_arch(spec_from_hf_config(config.to_dict()))


@pytest.mark.parametrize("out_type", ["f32", "f16"])
def test_olmo2_logits_equal_transformers(tmp_path: Path, out_type: str) -> None:
    _need(TOY_SPM)
    config = transformers.Olmo2Config(**_COMMON)
    folder = _folder(tmp_path, config, transformers.Olmo2ForCausalLM)
    reader = _check(folder, tmp_path, out_type)
    assert _field(reader, "general.architecture") == "olmo2"
    names = _tensors(reader)
    assert {"blk.0.attn_q_norm.weight", "blk.0.post_attention_norm.weight",
            "blk.0.post_ffw_norm.weight", "output.weight"} <= names  # fmt: skip
    assert not {"blk.0.attn_norm.weight", "blk.0.ffn_norm.weight"} & names


def test_olmo2_tied_writes_the_output_projection(tmp_path: Path) -> None:
    """llama.cpp's olmo2 loader needs ``output.weight``: tied embeddings are written twice."""
    _need(TOY_SPM)
    config = transformers.Olmo2Config(**_COMMON, tie_word_embeddings=True)
    reader = _check(_folder(tmp_path, config, transformers.Olmo2ForCausalLM), tmp_path)
    data = {t.name: np.asarray(t.data) for t in reader.tensors}
    assert np.array_equal(data["output.weight"], data["token_embd.weight"])


def test_olmo3_sliding_window_logits_equal_transformers(tmp_path: Path) -> None:
    """OLMo 3: layers 0-2 slide (window 6 < the 20 test tokens), layer 3 attends fully."""
    _need(TOY_SPM)
    config = transformers.Olmo3Config(**{**_COMMON, "num_hidden_layers": 4}, sliding_window=6)
    assert config.layer_types[:4] == ["sliding_attention"] * 3 + ["full_attention"]
    reader = _check(_folder(tmp_path, config, transformers.Olmo3ForCausalLM), tmp_path)
    assert _field(reader, "general.architecture") == "olmo2"
    assert _field(reader, "olmo2.attention.sliding_window") == 6


@pytest.mark.parametrize("out_type", ["f32", "f16"])
def test_granite_logits_equal_transformers(tmp_path: Path, out_type: str) -> None:
    _need(TOY_SPM)
    config = transformers.GraniteConfig(**_COMMON, **_GRANITE)
    reader = _check(_folder(tmp_path, config, transformers.GraniteForCausalLM), tmp_path,
                    out_type)  # fmt: skip
    assert _field(reader, "general.architecture") == "granite"
    assert _field(reader, "granite.embedding_scale") == 12.0
    assert _field(reader, "granite.logit_scale") == 8.0
    assert _field(reader, "granite.attention.scale") == 0.5


@pytest.mark.parametrize("rope", [True, False])
def test_granite4_dense_logits_equal_transformers(tmp_path: Path, rope: bool) -> None:
    """Granite 4.0 dense (granitemoehybrid, attention in every layer, fused shared_mlp);
    without RoPE llama.cpp's switch ``rope.scaling.finetuned`` is false."""
    _need(TOY_SPM)
    config = transformers.GraniteMoeHybridConfig(
        **_COMMON, **_GRANITE, shared_intermediate_size=96, num_local_experts=0,
        num_experts_per_tok=0, layer_types=["attention"] * 2,
        position_embedding_type="rope" if rope else None,
    )  # fmt: skip
    folder = _folder(tmp_path, config, transformers.GraniteMoeHybridForCausalLM)
    reader = _check(folder, tmp_path)
    assert _field(reader, "general.architecture") == "granite"
    assert ("granite.rope.scaling.finetuned" in reader.fields) is not rope


def _yarn(attention_factor: float | None = None, theta: float = 500_000.0) -> dict[str, Any]:
    """YaRN x8 over an original context of 8 (so it acts within the 20 test tokens)."""
    params: dict[str, Any] = {"rope_type": "yarn", "rope_theta": theta, "factor": 8.0,
                              "original_max_position_embeddings": 8, "beta_fast": 32.0,
                              "beta_slow": 1.0}  # fmt: skip
    if attention_factor is not None:
        params["attention_factor"] = attention_factor
    return params


def test_olmo3_yarn_logits_equal_transformers(tmp_path: Path) -> None:
    """OLMo 3's released RoPE: YaRN (attention factor 0.1 ln 8 + 1) on the global layers,
    plain RoPE of the same base on the sliding ones."""
    _need(TOY_SPM)
    config = transformers.Olmo3Config(
        **{**_COMMON, "num_hidden_layers": 4}, sliding_window=6,
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 500_000.0},
                         "full_attention": _yarn(1.2079441541679836)},
    )  # fmt: skip
    reader = _check(_folder(tmp_path, config, transformers.Olmo3ForCausalLM), tmp_path)
    assert _field(reader, "olmo2.rope.scaling.type") == "yarn"
    assert _field(reader, "olmo2.rope.scaling.original_context_length") == 8
    assert _field(reader, "olmo2.rope.freq_base_swa") == 500_000.0


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "smollm3"])
def test_yarn_logits_equal_transformers(tmp_path: Path, family: str) -> None:
    _need(TOY_SPM)
    classes = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
        "smollm3": (transformers.SmolLM3Config, transformers.SmolLM3ForCausalLM),
    }
    config_cls, model_cls = classes[family]
    config = config_cls(**_COMMON, rope_parameters=_yarn())
    reader = _check(_folder(tmp_path, config, model_cls), tmp_path)
    assert _field(reader, f"{_field(reader, 'general.architecture')}.rope.scaling.factor") == 8.0


def test_yarn_with_another_attention_factor_is_refused() -> None:
    """llama.cpp scales yarn's cos / sin by its own 0.1 ln(factor) + 1 whatever the file says."""
    from tunesmith.models._gguf_arch import gguf_arch
    from tunesmith.models.convert_weights import spec_from_hf_config

    config = transformers.Qwen3Config(**_COMMON, rope_parameters=_yarn(1.5))
    with pytest.raises(
        ValueError, match=r"'qwen3'.*attention factor 1.5 .*attention factor 1.20794"
    ):
        gguf_arch(spec_from_hf_config(config.to_dict()))


@pytest.mark.parametrize("mscale_all_dim", [1.0, 0.5])
def test_ministral3_logits_equal_transformers(tmp_path: Path, mscale_all_dim: float) -> None:
    """Ministral 3 (``mistral3``): yarn x16 over an original 8 positions with transformers'
    mscale / mscale_all_dim attention factor (``rope.scaling.yarn_log_mul``), and the queries
    times 1 + 0.5 ln(1 + floor(p / 8)) (``attention.temperature_scale`` / ``_length``)."""
    _need(TOY_SPM)
    config = transformers.Ministral3Config(
        **_COMMON, head_dim=16,
        rope_parameters={"rope_type": "yarn", "rope_theta": 1_000_000.0, "factor": 16.0,
                         "original_max_position_embeddings": 8, "beta_fast": 32.0,
                         "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": mscale_all_dim,
                         "llama_4_scaling_beta": 0.5},
    )  # fmt: skip
    reader = _check(_folder(tmp_path, config, transformers.Ministral3ForCausalLM), tmp_path)
    assert _field(reader, "general.architecture") == "mistral3"
    assert _field(reader, "mistral3.attention.temperature_scale") == 0.5
    assert _field(reader, "mistral3.rope.scaling.yarn_log_multiplier") == pytest.approx(
        mscale_all_dim
    )


def test_mistral_small3_logits_equal_transformers(tmp_path: Path) -> None:
    """Mistral Small 3.x / Nemo: ``llama`` with head_dim (32) != hidden / heads (16)."""
    _need(TOY_SPM)
    config = transformers.MistralConfig(**_COMMON, head_dim=32, sliding_window=None)
    reader = _check(_folder(tmp_path, config, transformers.MistralForCausalLM), tmp_path)
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "llama.attention.key_length") == 32


def _gpt_oss(truncate: bool) -> Any:
    """gpt-oss: attention sinks, q/k/v/o biases, layers 0 and 2 sliding (window 6), yarn x32
    (head_dim 32 over an original 256: the ramp bounds 0.42 / 6.44 are not integers), top-2
    of 4 biased experts with the clamped SwiGLU."""
    return transformers.GptOssConfig(
        **{**_COMMON, "num_hidden_layers": 4, "intermediate_size": 32,
           "max_position_embeddings": 512},
        head_dim=32, num_local_experts=4, num_experts_per_tok=2, sliding_window=6,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10_000.0, "factor": 32.0,
                         "original_max_position_embeddings": 256, "beta_fast": 32.0,
                         "beta_slow": 1.0, "truncate": truncate},
    )  # fmt: skip


@pytest.mark.parametrize("out_type", ["f32", "f16"])
def test_gpt_oss_logits_equal_transformers(tmp_path: Path, out_type: str) -> None:
    _need(TOY_SPM)
    folder = _folder(tmp_path, _gpt_oss(truncate=True), transformers.GptOssForCausalLM)
    reader = _check(folder, tmp_path, out_type)
    assert _field(reader, "general.architecture") == "gpt-oss"
    assert _field(reader, "gpt-oss.attention.sliding_window") == 6
    assert _field(reader, "gpt-oss.expert_feed_forward_length") == 32
    names = _tensors(reader)
    assert {"blk.0.attn_sinks.weight", "blk.0.ffn_gate_inp.bias", "blk.0.ffn_up_exps.bias",
            "blk.0.attn_output.bias", "blk.0.post_attention_norm.weight"} <= names  # fmt: skip
    assert "blk.0.ffn_norm.weight" not in names


def test_gpt_oss_released_untruncated_yarn_is_close(tmp_path: Path) -> None:
    """gpt-oss's own config has ``truncate: false``; llama.cpp rounds the yarn ramp bounds
    (as its own gpt-oss GGUFs do): logits within 1e-3 of their range, same argmax tokens."""
    _need(TOY_SPM)
    folder = _folder(tmp_path, _gpt_oss(truncate=False), transformers.GptOssForCausalLM)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        want = hf(torch.tensor([TOKENS])).logits[0].numpy()
    path = export_hf_folder_to_gguf(folder, tmp_path / "m.gguf", out_type="f32")
    got = _llama_cpp_logits(path, TOKENS)
    assert np.abs(got - want).max() <= 1e-3 * np.abs(want).max()
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_untruncated_yarn_elsewhere_is_refused() -> None:
    from tunesmith.models._gguf_arch import gguf_arch
    from tunesmith.models.convert_weights import spec_from_hf_config

    config = transformers.Qwen3Config(**_COMMON, rope_parameters={**_yarn(), "truncate": False})
    with pytest.raises(ValueError, match=r"'qwen3'.*yarn with truncate=False"):
        gguf_arch(spec_from_hf_config(config.to_dict()))


def _llama4(**over: Any) -> Any:
    """Llama 4 text as llama.cpp runs it: chunks of 8192 in the RoPE layers, layer 3 NoPE
    (temperature floor 8192, scale 0.1), weightless q/k RMS norm, top-1 sigmoid routing of 4
    experts scaling the expert's input plus a shared expert in layers 1 and 3, dense 0 and 2."""
    values: dict[str, Any] = dict(
        head_dim=16, intermediate_size_mlp=128, num_local_experts=4, num_experts_per_tok=1,
        interleave_moe_layer_step=2, no_rope_layers=[1, 1, 1, 0], attention_chunk_size=8192,
        floor_scale=8192, attn_scale=0.1,
    )  # fmt: skip
    return transformers.Llama4TextConfig(
        **{**_COMMON, "num_hidden_layers": 4, "intermediate_size": 32}, **(values | over)
    )


@pytest.mark.parametrize("out_type", ["f32", "f16"])
def test_llama4_logits_equal_transformers(tmp_path: Path, out_type: str) -> None:
    _need(TOY_SPM)
    reader = _check(_folder(tmp_path, _llama4(), transformers.Llama4ForCausalLM), tmp_path,
                    out_type)  # fmt: skip
    assert _field(reader, "general.architecture") == "llama4"
    assert _field(reader, "llama4.interleave_moe_layer_step") == 2
    names = _tensors(reader)
    assert {"blk.1.ffn_gate_exps.weight", "blk.1.ffn_up_shexp.weight",
            "blk.0.ffn_gate.weight"} <= names  # fmt: skip
    assert "blk.0.ffn_gate_inp.weight" not in names


def test_llama4_other_chunks_are_refused() -> None:
    from tunesmith.models._gguf_arch import gguf_arch
    from tunesmith.models.convert_weights import spec_from_hf_config

    config = _llama4(attention_chunk_size=8, floor_scale=4)
    with pytest.raises(ValueError, match=r"'llama4'.*attn_chunk_size=8 .*attn_temperature"):
        gguf_arch(spec_from_hf_config(config.to_dict()))


def test_multimodal_ministral3_folder_exports_its_text_decoder(tmp_path: Path) -> None:
    """Ministral 3 / Mistral Small 3.1+ are released as ``Mistral3ForConditionalGeneration``
    folders: the GGUF holds the text decoder (the vision tower is dropped) and answers text
    as transformers' multimodal model does."""
    _need(TOY_SPM)
    text = transformers.Ministral3Config(
        **_COMMON, head_dim=16,
        rope_parameters={"rope_type": "yarn", "rope_theta": 1_000_000.0, "factor": 16.0,
                         "original_max_position_embeddings": 8, "beta_fast": 32.0,
                         "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0,
                         "llama_4_scaling_beta": 0.5},
    )  # fmt: skip
    vision = transformers.PixtralVisionConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
        image_size=32, patch_size=8, head_dim=16,
    )  # fmt: skip
    config = transformers.Mistral3Config(
        text_config=text, vision_config=vision, image_token_index=5, tie_word_embeddings=False
    )
    folder = _folder(tmp_path, config, transformers.Mistral3ForConditionalGeneration)
    reader = _check(folder, tmp_path, cls=transformers.Mistral3ForConditionalGeneration)
    assert _field(reader, "general.architecture") == "mistral3"
    assert not any("vision" in t.name or "mm" in t.name for t in reader.tensors)
