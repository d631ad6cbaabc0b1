"""Mistral Nemo 12B, Mistral Small 3.x 24B and Ministral 3 (3B / 8B / 14B): each spec equals
what its released ``config.json`` values read into (also as the ``text_config`` of the
multimodal ``mistral3`` releases), and builds (meta device) transformers' parameter count,
which matches the model cards' published totals.

The config values are the released checkpoints' (Hugging Face hub ``config.json`` /
``text_config``: Mistral-Nemo-Base-2407, Mistral-Small-24B-Base-2501 (text-only),
Mistral-Small-3.1-24B-Base-2503 (3.2 2506 shares it), Ministral-3-{3B,8B,14B}-Base-2512). Logits, left padding,
KV-cached decoding and the HF round trip of both architectures run on tiny random models in
``test_hf_parity`` / ``test_dense_families`` (``mistral_nemo``, ``ministral3``).
"""

from __future__ import annotations

import importlib

import pytest
import torch

from tunesmith.models import SPECS, spec_from_hf_config

transformers = pytest.importorskip("transformers")

_TEKKEN = dict(
    vocab_size=131_072,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    rms_norm_eps=1e-5,
    sliding_window=None,
    tie_word_embeddings=False,
)
_MINISTRAL3_ROPE = {
    "rope_type": "yarn",
    "rope_theta": 1_000_000.0,
    "factor": 16.0,
    "original_max_position_embeddings": 16_384,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
    "llama_4_scaling_beta": 0.1,
}

#: builder name -> the released (text) config's architecture values
HF_CONFIGS: dict[str, dict] = {
    "mistral_nemo_12b": {
        **_TEKKEN,
        "model_type": "mistral",
        "hidden_size": 5120,
        "intermediate_size": 14_336,
        "num_hidden_layers": 40,
        "max_position_embeddings": 1_024_000,
        "rope_theta": 1_000_000.0,
    },
    "mistral_small_24b": {
        **_TEKKEN,
        "model_type": "mistral",
        "hidden_size": 5120,
        "intermediate_size": 32_768,
        "num_hidden_layers": 40,
        "max_position_embeddings": 32_768,
        "rope_theta": 100_000_000.0,
    },
    "mistral_small_3_1_24b": {
        **_TEKKEN,
        "model_type": "mistral",
        "hidden_size": 5120,
        "intermediate_size": 32_768,
        "num_hidden_layers": 40,
        "max_position_embeddings": 131_072,
        "rope_theta": 1_000_000_000.0,
    },
    "ministral3_3b": {
        **_TEKKEN,
        "model_type": "ministral3",
        "hidden_size": 3072,
        "intermediate_size": 9216,
        "num_hidden_layers": 26,
        "max_position_embeddings": 262_144,
        "tie_word_embeddings": True,
        "rope_parameters": _MINISTRAL3_ROPE,
    },
    "ministral3_8b": {
        **_TEKKEN,
        "model_type": "ministral3",
        "hidden_size": 4096,
        "intermediate_size": 14_336,
        "num_hidden_layers": 34,
        "max_position_embeddings": 262_144,
        "rope_parameters": _MINISTRAL3_ROPE,
    },
    "ministral3_14b": {
        **_TEKKEN,
        "model_type": "ministral3",
        "hidden_size": 5120,
        "intermediate_size": 16_384,
        "num_hidden_layers": 40,
        "max_position_embeddings": 262_144,
        "rope_parameters": {**_MINISTRAL3_ROPE, "rope_theta": 1_000_000_000.0},
    },
}

#: model cards' published sizes in billions, as written there (hub: Nemo 12.2B, Small 3.x
#: 23.6B; Ministral 3 cards: language models of 3.4B / 8.4B / 13.5B, rounded or cut to 0.1B)
PUBLISHED_B = {
    "mistral_nemo_12b": 12.2,
    "mistral_small_24b": 23.6,
    "mistral_small_3_1_24b": 23.6,
    "ministral3_3b": 3.4,
    "ministral3_8b": 8.4,
    "ministral3_14b": 13.5,
}


def _hf_config(name: str):
    values = dict(HF_CONFIGS[name])
    return transformers.AutoConfig.for_model(values.pop("model_type"), **values)


def _builder(name: str):
    package = name.split("_")[0]
    return getattr(importlib.import_module(f"tunesmith.models.{package}"), name)


def _same(a, b) -> bool:
    return a.replace(head_dim=a.resolved_head_dim) == b.replace(head_dim=b.resolved_head_dim)


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_spec_is_what_the_released_config_reads_into(name):
    assert _same(spec_from_hf_config(_hf_config(name).to_dict()), SPECS[name])


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_multimodal_text_config_reads_the_same(name):
    """Small 3.1 / 3.2 and Ministral 3 ship as ``mistral3`` (Pixtral vision + text decoder)."""
    if name in ("mistral_nemo_12b", "mistral_small_24b"):
        pytest.skip("Mistral Nemo and Small 3 (2501) are text-only")
    text = _hf_config(name).to_dict()
    outer = transformers.Mistral3Config(text_config=text).to_dict()
    assert outer["model_type"] == "mistral3"
    assert _same(spec_from_hf_config(outer), SPECS[name])


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_parameter_count_equals_transformers_on_meta(name):
    with torch.device("meta"):
        ours = _builder(name)()
        theirs = transformers.AutoModelForCausalLM.from_config(_hf_config(name))
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters())
    assert abs(count / 1e9 - PUBLISHED_B[name]) < 0.1, count


def test_ministral3_yarn_attention_factor_is_mscale_ratio():
    """``mscale`` / ``mscale_all_dim`` set the yarn cos / sin factor (1 here), as transformers'
    ``_compute_yarn_parameters``; without them it is ``0.1 ln(factor) + 1``."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = _hf_config("ministral3_8b")
    _, expected = ROPE_INIT_FUNCTIONS["yarn"](cfg, None)
    spec = SPECS["ministral3_8b"]
    assert spec.rope_scaling.cos_sin_scale == pytest.approx(expected, rel=1e-12) == 1.0
    assert spec.query_log_scaling == (0.1, 16_384.0)
    values = {**HF_CONFIGS["ministral3_8b"], "model_type": "mistral"}
    rope = {k: v for k, v in _MINISTRAL3_ROPE.items() if not k.startswith(("mscale", "llama"))}
    values["rope_parameters"] = rope
    read = spec_from_hf_config(values)
    assert read.query_log_scaling is None  # transformers' Mistral ignores the beta
    assert read.rope_scaling.cos_sin_scale == pytest.approx(0.1 * torch.tensor(16.0).log() + 1)


def test_gguf_export_writes_nemo_and_ministral3():
    """llama.cpp's ``llama`` graph runs Nemo (``key_length`` 128); Ministral 3's query scaling
    needs its ``mistral3`` graph (tests/models/test_gguf_archs.py runs both in llama.cpp)."""
    from tunesmith.models._gguf_arch import gguf_arch

    assert gguf_arch(SPECS["mistral_nemo_12b"]) == "llama"
    assert gguf_arch(SPECS["ministral3_8b"]) == "mistral3"
