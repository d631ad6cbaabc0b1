"""Dense families' RoPE variants and KV-cached decoding against transformers.

RoPE: our inverse frequencies (and cos / sin scale) equal transformers' ``ROPE_INIT_FUNCTIONS``
for longrope (short and long factors), dynamic NTK (inside and past the trained length) and
partial rotary. Decoding: prefill then one token at a time with our KV cache equals
transformers' cached forward (Gemma 3's local / global RoPE and sliding window, SmolLM3's
NoPE layers, Phi-4-mini's partial rotary + longrope, OLMo 2, OLMo 3's sliding window with
YaRN on the global layers only, Granite, Granite 4.0 dense, Ministral 3's yarn and query
scaling).
"""

from __future__ import annotations

import pytest
import torch

from tests.models._tiny_hf import VOCAB, make_checkpoint, read_checkpoint, tiny_configs
from tunesmith.models import build_decoder, model_type_of, spec_from_hf_config
from tunesmith.models.convert_weights import hf_to_native
from tunesmith.modules.rope import RotaryEmbedding, apply_rope

transformers = pytest.importorskip("transformers")
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402


def _ours(name: str, seq_len: int) -> tuple[torch.Tensor, float]:
    spec = spec_from_hf_config(tiny_configs()[name].to_dict())
    rope = RotaryEmbedding(
        spec.resolved_head_dim, spec.rope_base, spec.rope_scaling, spec.rotary_dim
    )
    positions = torch.arange(seq_len)[None]
    scale = 1.0 if spec.rope_scaling is None else spec.rope_scaling.cos_sin_scale
    return rope._inv_freq(positions), scale


@pytest.mark.parametrize(
    ("name", "seq_len"),
    [("phi3_longrope", 8), ("phi3_longrope", 40), ("phi4_mini", 16), ("phi4_mini", 17),
     ("llama_dynamic", 10), ("llama_dynamic", 16), ("llama_dynamic", 50)],
)  # fmt: skip
def test_inv_freq_equals_transformers(name, seq_len):
    cfg = tiny_configs()[name]
    kind = cfg.rope_parameters["rope_type"]
    hf_seq = seq_len if kind == "dynamic" else (seq_len if seq_len > 16 else None)
    expected, expected_scale = ROPE_INIT_FUNCTIONS[kind](cfg, None, seq_len=hf_seq)
    got, scale = _ours(name, seq_len)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    assert scale == pytest.approx(expected_scale, rel=1e-12)


def test_partial_rotary_rotates_only_the_first_features():
    rope = RotaryEmbedding(16, 10_000.0, rotary_dim=12)
    cos, sin = rope(torch.arange(5), torch.float32)
    assert cos.shape == (1, 1, 5, 12)
    x = torch.randn(1, 2, 5, 16)
    y = apply_rope(x, cos, sin)
    assert torch.equal(y[..., 12:], x[..., 12:])
    assert torch.equal(y[..., :12], apply_rope(x[..., :12], cos, sin))


#: Gemma 3, OLMo 3 and Ministral 3 (query scaling by position) run in the default suite;
#: the others (about 6 s each) are slow
DECODE = ["gemma3", "olmo3", "ministral3"] + [
    pytest.param(n, marks=pytest.mark.slow)
    for n in ("smollm3", "phi4_mini", "olmo2", "granite", "granite4")
]


@pytest.mark.parametrize("name", DECODE)
def test_kv_cached_decoding_equals_transformers(name, tmp_path):
    hf = make_checkpoint(name, tmp_path)
    config, hf_sd = read_checkpoint(tmp_path)
    spec = spec_from_hf_config(config)
    ours = build_decoder(spec).eval()
    ours.load_state_dict(hf_to_native(hf_sd, model_type_of(spec), config), strict=True)
    tokens = torch.randint(3, VOCAB, (2, 22), generator=torch.Generator().manual_seed(3))
    prefill = 12
    with torch.no_grad():
        out = hf(tokens[:, :prefill], use_cache=True)
        expected, cache = [out.logits], out.past_key_values
        for t in range(prefill, tokens.shape[1]):
            out = hf(tokens[:, t : t + 1], past_key_values=cache, use_cache=True)
            expected.append(out.logits)
            cache = out.past_key_values
        ours.setup_caches(2, torch.float32, 32)
        got = [ours(tokens[:, :prefill])]
        got += [ours(tokens[:, t : t + 1]) for t in range(prefill, tokens.shape[1])]
    expected_t, got_t = torch.cat(expected, 1), torch.cat(got, 1)
    scale = expected_t.abs().max().item()
    assert (got_t - expected_t).abs().max().item() <= 1e-5 * max(scale, 1.0)


def test_tensor_parallel_refuses_olmo2_qk_norm_across_heads():
    from tunesmith.training.tensor_parallel import check_tp_degree

    spec = spec_from_hf_config(tiny_configs()["olmo2"].to_dict())
    with torch.device("meta"):
        model = build_decoder(spec)
    check_tp_degree(model, 1)
    with pytest.raises(ValueError, match="normalises q / k over all heads"):
        check_tp_degree(model, 2)
