"""The per-architecture data of GGUF export: which llama.cpp architecture each tunesmith
family is written as, the tensor names, and what each architecture's graph can run.

A family llama.cpp runs with an existing graph is a table entry here; ``_gguf_arch`` reads
these tables to check a spec, name its tensors and write its hyper-parameters. The rules
are those of llama.cpp's loaders and graphs (``src/models/<arch>.cpp``) and of
``convert_hf_to_gguf.py``, as the ``gguf`` package's constants name them.
"""

from __future__ import annotations

__all__ = [
    "ALLOWED",
    "ARCH_OF_FAMILY",
    "CORE_FIELDS",
    "LAYER_NAMES",
    "LLAMA4_CHUNK",
    "LLAMA4_TEMPERATURE",
    "LOCAL_ROPE",
    "NOPE_LAYER_STEP",
    "MOE_FAMILIES",
    "NORM_ROPE",
    "PARTIAL_ROTARY",
    "RENAMES",
    "REQUIRED",
    "ROPE_SCALINGS",
    "SLIDING",
    "TOP_NAMES",
    "UNTIED_ONLY",
    "VARIANTS",
    "YARN_LOG_MUL",
    "YARN_ROUNDED",
]

#: native layer suffix -> GGUF tensor name inside ``blk.{i}.``
LAYER_NAMES = {
    "sa_norm.scale": "attn_norm.weight",
    "mlp_norm.scale": "ffn_norm.weight",
    "attn.q_proj.weight": "attn_q.weight",
    "attn.k_proj.weight": "attn_k.weight",
    "attn.v_proj.weight": "attn_v.weight",
    "attn.q_proj.bias": "attn_q.bias",
    "attn.k_proj.bias": "attn_k.bias",
    "attn.v_proj.bias": "attn_v.bias",
    "attn.q_norm.scale": "attn_q_norm.weight",
    "attn.k_norm.scale": "attn_k_norm.weight",
    "attn.output_proj.weight": "attn_output.weight",
    "mlp.w1.weight": "ffn_gate.weight",
    "mlp.w2.weight": "ffn_down.weight",
    "mlp.w3.weight": "ffn_up.weight",
    "sa_scale.scale": "post_attention_norm.weight",  # Gemma 2/3 and OLMo 2 post-norms
    "mlp_scale.scale": "post_ffw_norm.weight",
    "mlp.router.gate.weight": "ffn_gate_inp.weight",  # mixture of experts
    "mlp.experts.gate_proj": "ffn_gate_exps.weight",
    "mlp.experts.up_proj": "ffn_up_exps.weight",
    "mlp.experts.down_proj": "ffn_down_exps.weight",
    "mlp.router.gate.bias": "ffn_gate_inp.bias",  # gpt-oss: router / expert / output biases,
    "mlp.experts.gate_bias": "ffn_gate_exps.bias",  # attention sinks
    "mlp.experts.up_bias": "ffn_up_exps.bias",
    "mlp.experts.down_bias": "ffn_down_exps.bias",
    "attn.output_proj.bias": "attn_output.bias",
    "attn.sinks": "attn_sinks.weight",
    "mlp.shared_expert.w1.weight": "ffn_gate_shexp.weight",  # Llama 4's shared expert
    "mlp.shared_expert.w2.weight": "ffn_down_shexp.weight",
    "mlp.shared_expert.w3.weight": "ffn_up_shexp.weight",
}
#: per-architecture renames of the names above (gpt-oss calls its pre-feed-forward norm the
#: attention post-norm)
RENAMES = {"gpt-oss": {"ffn_norm.weight": "post_attention_norm.weight"}}
#: native top-level key -> GGUF tensor name
TOP_NAMES = {
    "tok_embeddings.weight": "token_embd.weight",
    "norm.scale": "output_norm.weight",
    "output.weight": "output.weight",
}

#: tunesmith family -> llama.cpp architecture (``general.architecture``)
ARCH_OF_FAMILY = {
    **dict.fromkeys(
        ("LLAMA2", "LLAMA3", "LLAMA3_1", "LLAMA3_2", "LLAMA3_3", "CODE_LLAMA2", "MISTRAL"),
        "llama",
    ),
    "SMOLLM2": "llama",
    "SMOLLM3": "smollm3",
    "QWEN2": "qwen2",
    "QWEN2_5": "qwen2",
    "QWEN3": "qwen3",
    "GEMMA": "gemma",
    "GEMMA2": "gemma2",
    "GEMMA3": "gemma3",
    "PHI3_MINI": "phi3",  # Phi-3 / 3.5 mini and Phi-4-mini (partial rotary)
    "PHI4": "phi3",
    "OLMO2": "olmo2",
    "OLMO3": "olmo2",  # llama.cpp runs OLMo 3 (sliding windows 3 of every 4) as olmo2
    "GRANITE": "granite",
    "GRANITE4": "granite",  # the dense Granite 4.0 models: Granite 3's decoder
    "MIXTRAL": "llama",
    "QWEN3_MOE": "qwen3moe",
    "GPT_OSS": "gpt-oss",
    "LLAMA4": "llama4",  # the text decoder
}
#: architecture -> (spec field, the architecture a spec with that field set is written as):
#: Ministral 3 is a Mistral with Llama-4-style query scaling, llama.cpp's ``mistral3``
VARIANTS = {"llama": ("query_log_scaling", "mistral3")}

#: spec fields checked against their defaults: each architecture's ``ALLOWED`` lists the
#: ones it may change; the fields here (sizes, RoPE, windows, experts) have their own checks
CORE_FIELDS = frozenset({
    "family", "vocab_size", "num_layers", "num_heads", "num_kv_heads", "embed_dim",
    "intermediate_dim", "max_seq_len", "head_dim", "rope_base", "rope_scaling", "norm_eps",
    "activation", "tie_embeddings", "sliding_window", "layer_types", "num_experts",
    "experts_per_token", "moe_intermediate_dim", "dense_layers", "router_norm_topk",
    "router_scoring", "shared_expert_dim", "router_bias", "expert_bias", "swiglu_limit",
    "local_rope_base", "local_rope_scaling", "nope_layers", "rotary_dim",
})  # fmt: skip

_GEMMA = {"norm_offset", "embed_scale", "post_norms", "query_pre_attn_scalar", "final_softcap"}
_OLMO2 = {"pre_norms", "post_norms", "qk_norm", "qk_norm_across_heads", "norm_scale_fp32"}
_GRANITE = {"embed_multiplier", "residual_multiplier", "attn_scale", "logits_divisor"}
#: the non-core spec fields each architecture's graph implements (others must be default)
ALLOWED: dict[str, set[str]] = {
    "llama": set(),
    "smollm3": set(),
    "qwen2": {"qkv_bias"},
    "qwen3": {"qk_norm"},
    "qwen3moe": {"qk_norm"},
    "gemma": {"norm_offset", "embed_scale"},
    "gemma2": _GEMMA | {"attn_softcap"},
    "gemma3": _GEMMA | {"qk_norm"},
    "phi3": set(),
    "olmo2": _OLMO2,
    "granite": _GRANITE,
    "mistral3": {"query_log_scaling"},
    "gpt-oss": {"qkv_bias", "out_bias", "attn_sinks"},
    "llama4": {"qk_rms_norm", "attn_temperature", "router_weights_inputs", "attn_chunk_size"},
}
#: fields an architecture's graph always applies, so the spec must have them so
REQUIRED: dict[str, dict[str, object]] = {
    # no input norms; q / k RMS-normed over all heads at once; sandwich-free post-norms
    "olmo2": {
        "pre_norms": False,
        "post_norms": True,
        "qk_norm": True,
        "qk_norm_across_heads": True,
    },  # fmt: skip
}
#: architectures llama.cpp applies "normal" (interleaved-pair) RoPE to: q / k rows are
#: permuted to Meta's layout, as convert_hf_to_gguf.py's LlamaModel does
NORM_ROPE = frozenset({"llama", "smollm3", "granite", "mistral3", "llama4"})
#: RoPE scaling types (``RopeScaling.rope_type``) each architecture's export writes
ROPE_SCALINGS: dict[str, set[str | None]] = {arch: {None, "linear"} for arch in ALLOWED}
ROPE_SCALINGS["llama"] |= {"llama3"}
ROPE_SCALINGS["llama4"] |= {"llama3"}
ROPE_SCALINGS["phi3"] |= {"longrope"}
ROPE_SCALINGS["olmo2"] = ROPE_SCALINGS["gpt-oss"] = {
    None,
    "yarn",
}  # llama.cpp's olmo2: yarn on the full layers only
for _arch in ("llama", "smollm3", "qwen2", "qwen3", "mistral3"):
    ROPE_SCALINGS[_arch] |= {"yarn"}
#: llama.cpp's yarn multiplies cos / sin by m(1), m(x) = 0.1 x ln(factor) + 1 (transformers'
#: default attention factor), except in these graphs: m(1) / m(``rope.scaling.yarn_log_mul``)
#: (DeepSeek's mscale / mscale_all_dim with mscale 1; Ministral 3: 1 / 1)
YARN_LOG_MUL = frozenset({"mistral3"})
#: architectures written with transformers' untruncated yarn ramp (``truncate: false``,
#: gpt-oss's released config): llama.cpp rounds the ramp bounds to integers, as in the
#: gpt-oss GGUFs convert_hf_to_gguf.py writes (logits off by ~3e-4 of their range at 20
#: tokens, tests/models/test_gguf_archs.py)
YARN_ROUNDED = frozenset({"gpt-oss"})
#: architectures whose sliding-window layers may have their own RoPE base (unscaled):
#: ``rope.freq_base_swa``
LOCAL_ROPE = frozenset({"gemma3", "olmo2"})
#: architectures whose RoPE may rotate only the first ``rotary_dim`` features of a head
#: (llama.cpp's ``rope.dimension_count`` < head_dim, NEOX layout)
PARTIAL_ROTARY = frozenset({"phi3"})
#: llama.cpp's fixed NoPE pattern: layer i skips RoPE iff (i + 1) % step == 0 (SmolLM3: 4);
#: ``granite`` skips RoPE in every layer or none (``rope.scaling.finetuned``)
NOPE_LAYER_STEP = {"smollm3": 4, "llama4": 4}
#: sliding-window layer patterns llama.cpp runs: layer i slides iff i % n < n - 1 (a window
#: in every layer for n = 1 is ignored by llama.cpp's phi3: its default config has one)
SLIDING = {"gemma2": 2, "gemma3": 6, "olmo2": 4, "phi3": 1, "gpt-oss": 2}
#: architectures whose loader needs an ``output.weight`` (no fallback to the embeddings)
UNTIED_ONLY = frozenset({"olmo2", "gpt-oss"})
#: mixture-of-experts architectures: the families written with experts, and whether the
#: router / experts carry biases and a clamped SwiGLU (gpt-oss: limit 7, alpha 1.702)
MOE_FAMILIES = {"llama": ({"MIXTRAL"}, False), "qwen3moe": ({"QWEN3_MOE"}, False),
                "gpt-oss": ({"GPT_OSS"}, True), "llama4": ({"LLAMA4"}, False)}  # fmt: skip
#: Llama 4 as llama.cpp's loader fixes it: chunked attention of 8192 in 3 of every 4 layers
#: (the NoPE ones attend fully), NoPE-layer query temperature (floor 8192, scale 0.1), top-1
#: sigmoid routing that scales the expert's input, a shared expert, MoE every n-th layer
LLAMA4_CHUNK = 8192
LLAMA4_TEMPERATURE = (8192.0, 0.1)
