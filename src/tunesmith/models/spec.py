"""``ModelSpec``: every architectural number of one model size, as plain data."""

from __future__ import annotations

from dataclasses import dataclass, replace

from tunesmith.modules.rope import RopeScaling

__all__ = ["ModelSpec", "RopeScaling", "LoRASettings", "SLIDING", "FULL", "alternating_sliding"]

SLIDING = "sliding_attention"
FULL = "full_attention"


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of one decoder-only model size.

    ``family`` names the weight-conversion rules (torchtune's ``model_type`` strings:
    ``LLAMA2``, ``LLAMA3``, ``LLAMA3_2``, ``MISTRAL``, ``GEMMA``, ``GEMMA2``, ``PHI3_MINI``,
    ``PHI4``, ``QWEN2``, ``QWEN3``). ``num_classes`` set turns the LM head into a
    classification / reward head ``[d] -> [num_classes]``. ``mrope_section`` set uses
    M-RoPE (three position ids per token, Qwen2.5-VL's decoder; ``mrope_interleaved``:
    Qwen3-VL's interleaved frequency layout).

    Mixture of experts (``num_experts > 0``): every layer not in ``dense_layers`` has a
    ``modules.moe.MoE`` feed-forward of ``num_experts`` experts of width
    ``moe_intermediate_dim``, ``experts_per_token`` per token, scored by
    ``router_scoring`` (``softmax`` / ``sigmoid``), the kept scores renormalised when
    ``router_norm_topk``; ``shared_expert_dim`` adds a shared expert. Dense layers use
    ``intermediate_dim``. gpt-oss: ``router_bias`` / ``expert_bias`` (biases on the router and
    the expert projections), ``swiglu_limit`` (its clamped SwiGLU), ``attn_sinks`` (a learned
    sink logit per head), ``out_bias`` (a bias on the attention output projection). Llama 4:
    ``nope_layers`` skip RoPE (and take ``attn_temperature = (floor_scale, attn_scale)``),
    the other layers use chunked local attention of ``attn_chunk_size`` and, with
    ``qk_rms_norm``, a weightless RMS norm on q / k; ``router_weights_inputs`` scales the
    routed inputs (not outputs) by the sigmoid router weight.

    RoPE: ``rope_base`` / ``rope_scaling`` (llama3, linear, yarn, longrope, dynamic; see
    ``modules.rope.RopeScaling``); ``rotary_dim`` set rotates only the first ``rotary_dim``
    features of each head (partial rotary, Phi-4-mini); ``local_rope_base`` (and
    ``local_rope_scaling``) set give the sliding-window layers their own RoPE (Gemma 3:
    10k locally, 1M globally). ``nope_layers`` skip RoPE (Llama 4, SmolLM3).
    ``query_log_scaling = (beta, length)`` multiplies every layer's queries at RoPE position
    ``p`` by ``1 + beta * ln(1 + floor(p / length))`` (Ministral 3: ``llama_4_scaling_beta``
    over yarn's ``original_max_position_embeddings``).

    Norms: ``post_norms`` adds norms on the attention / feed-forward outputs (Gemma 2 / 3
    sandwich norms); ``pre_norms=False`` drops the input norms (OLMo 2: post-norms only);
    ``qk_norm_across_heads`` normalises q / k over all heads jointly (OLMo 2) instead of per
    head; ``norm_scale_fp32`` multiplies norm weights before the cast back (OLMo 2).

    Granite's multipliers: ``embed_multiplier`` (embeddings times it, unrounded),
    ``residual_multiplier`` (each block's attention / feed-forward output times it before the
    residual add), ``attn_scale`` (the softmax scale instead of ``hd ** -0.5``),
    ``logits_divisor`` (logits divided by it: ``logits_scaling``).

    Gemma 4: full-attention layers have their own head width / kv heads
    (``global_head_dim``, ``global_kv_heads``) and, with ``attn_k_eq_v``, no value
    projection (values = the key projection's output); ``v_norm`` puts a weightless RMS norm
    on the values; the last ``kv_shared_layers`` layers reuse the keys / values of the last
    earlier layer of their type (and have a ``2 *`` wide MLP with ``double_wide_mlp``);
    ``per_layer_dim`` set adds per-layer embeddings (a ``[per_layer_vocab_size, L *
    per_layer_dim]`` table and a gate per layer); ``layer_scalars`` multiplies each layer's
    output by a scalar buffer. ``moe_beside_mlp`` (Gemma 4 26B A4B): every MoE layer keeps its
    dense MLP and adds the experts beside it (``modules.moe.FeedForwardWithExperts``; the
    router norms its input and scales each expert's weight).
    """

    family: str
    vocab_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    embed_dim: int
    intermediate_dim: int
    max_seq_len: int
    head_dim: int | None = None
    rope_base: float = 10_000.0
    rope_scaling: RopeScaling | None = None
    norm_eps: float = 1e-5
    norm_offset: bool = False
    activation: str = "silu"
    qkv_bias: bool = False
    tie_embeddings: bool = False
    embed_scale: bool = False
    attn_softcap: float | None = None
    final_softcap: float | None = None
    query_pre_attn_scalar: float | None = None
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None
    qk_norm: bool = False
    post_norms: bool = False
    num_classes: int | None = None
    mrope_section: tuple[int, ...] | None = None
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_dim: int | None = None
    dense_layers: tuple[int, ...] = ()
    router_norm_topk: bool = True
    router_scoring: str = "softmax"
    shared_expert_dim: int | None = None
    router_bias: bool = False
    expert_bias: bool = False
    swiglu_limit: float | None = None
    attn_sinks: bool = False
    out_bias: bool = False
    nope_layers: tuple[int, ...] = ()
    attn_chunk_size: int | None = None
    qk_rms_norm: bool = False
    attn_temperature: tuple[float, float] | None = None
    router_weights_inputs: bool = False
    mrope_interleaved: bool = False
    rotary_dim: int | None = None
    pre_norms: bool = True
    qk_norm_across_heads: bool = False
    norm_scale_fp32: bool = False
    embed_multiplier: float | None = None
    residual_multiplier: float | None = None
    attn_scale: float | None = None
    logits_divisor: float | None = None
    local_rope_base: float | None = None
    local_rope_scaling: RopeScaling | None = None
    global_head_dim: int | None = None
    global_kv_heads: int | None = None
    attn_k_eq_v: bool = False
    v_norm: bool = False
    kv_shared_layers: int = 0
    double_wide_mlp: bool = False
    per_layer_dim: int | None = None
    per_layer_vocab_size: int | None = None
    layer_scalars: bool = False
    moe_beside_mlp: bool = False
    query_log_scaling: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.layer_types is not None and len(self.layer_types) != self.num_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries, num_layers={self.num_layers}"
            )
        if self.kv_shared_layers:
            first = self.num_layers - self.kv_shared_layers
            types = self.layer_types or (FULL,) * self.num_layers
            if first < 1 or set(types[first:]) - set(types[:first]):
                raise ValueError(
                    f"kv_shared_layers={self.kv_shared_layers}: every layer type of the shared "
                    "layers needs an earlier, unshared layer of that type"
                )
        if self.num_experts and not 0 < self.experts_per_token <= self.num_experts:
            raise ValueError(
                f"experts_per_token={self.experts_per_token} must be in 1..{self.num_experts}"
            )

    def is_full_layer(self, layer: int) -> bool:
        """Whether ``layer`` attends globally (by ``layer_types``; True without them)."""
        return self.layer_types is None or self.layer_types[layer] != SLIDING

    def layer_head_dim(self, layer: int) -> int:
        """Head width of ``layer`` (Gemma 4's full layers: ``global_head_dim``)."""
        if self.global_head_dim is not None and self.is_full_layer(layer):
            return self.global_head_dim
        return self.resolved_head_dim

    def layer_kv_heads(self, layer: int) -> int:
        """Key / value heads of ``layer`` (Gemma 4's full layers: ``global_kv_heads``)."""
        if self.global_kv_heads is not None and self.is_full_layer(layer):
            return self.global_kv_heads
        return self.num_kv_heads

    def kv_sharing(self, layer: int) -> tuple[str, str] | None:
        """``("reuse" | "store", layer type)`` of ``layer`` under Gemma 4's KV sharing.

        The last ``kv_shared_layers`` layers reuse; the last earlier layer of each type
        stores its keys / values for them.
        """
        if not self.kv_shared_layers:
            return None
        first = self.num_layers - self.kv_shared_layers
        types = self.layer_types or (FULL,) * self.num_layers
        if layer >= first:
            return ("reuse", types[layer])
        if max(i for i in range(first) if types[i] == types[layer]) == layer:
            return ("store", types[layer])
        return None

    def is_moe_layer(self, layer: int) -> bool:
        """Whether ``layer``'s feed-forward is a mixture of experts."""
        return self.num_experts > 0 and layer not in self.dense_layers

    @property
    def resolved_head_dim(self) -> int:
        """``head_dim``, defaulting to ``embed_dim // num_heads``."""
        return self.head_dim if self.head_dim is not None else self.embed_dim // self.num_heads

    def layer_window(self, layer: int) -> int | None:
        """Sliding window of ``layer`` or None for full attention.

        With ``sliding_window`` set and ``layer_types`` None every layer slides (Mistral v0.1).
        """
        if self.sliding_window is None:
            return None
        if self.layer_types is None or self.layer_types[layer] == SLIDING:
            return self.sliding_window
        return None

    def replace(self, **changes: object) -> ModelSpec:
        """A copy with some fields changed (e.g. a tiny test model)."""
        return replace(self, **changes)


def alternating_sliding(num_layers: int) -> tuple[str, ...]:
    """Gemma 2's pattern: even layers slide, odd layers attend fully."""
    return tuple(SLIDING if i % 2 == 0 else FULL for i in range(num_layers))


@dataclass(frozen=True)
class LoRASettings:
    """Where and how to put LoRA / DoRA adapters (torchtune's builder arguments)."""

    lora_attn_modules: tuple[str, ...]
    apply_lora_to_mlp: bool = False
    apply_lora_to_output: bool = False
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    use_dora: bool = False
    quantize_base: bool = False
