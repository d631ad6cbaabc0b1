"""One generic builder: ``ModelSpec`` (+ optional LoRA settings) -> ``TransformerDecoder``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from torch import nn

from tunesmith.models._hf_config import spec_from_hf_config
from tunesmith.models._peft_fused import refuse_partial_fused_dora
from tunesmith.models._specs import get_spec
from tunesmith.models.spec import LoRASettings, ModelSpec
from tunesmith.modules import (
    FeedForward,
    MultiHeadAttention,
    RMSNorm,
    RotaryEmbedding,
    TransformerDecoder,
    TransformerSelfAttentionLayer,
)
from tunesmith.modules.moe import FeedForwardWithExperts, GroupedExperts, MoE, TopKRouter
from tunesmith.modules.norms import HeadsRMSNorm, WeightlessRMSNorm
from tunesmith.modules.per_layer_embeddings import PerLayerEmbeddings, PerLayerInputGate
from tunesmith.modules.rope import MultimodalRotaryEmbedding

__all__ = [
    "LORA_ATTN_MODULE_NAMES",
    "build_decoder",
    "build_from_hf",
    "from_hf",
    "lora_model_builder",
    "lora_settings",
    "model_builder",
    "model_type_of",
]

LORA_ATTN_MODULE_NAMES = ("q_proj", "k_proj", "v_proj", "output_proj")


def lora_settings(
    lora_attn_modules: Sequence[str],
    apply_lora_to_mlp: bool = False,
    apply_lora_to_output: bool = False,
    lora_rank: int = 8,
    lora_alpha: float = 16,
    lora_dropout: float = 0.0,
    use_dora: bool = False,
    quantize_base: bool = False,
) -> LoRASettings:
    """Validate torchtune's LoRA builder arguments into a ``LoRASettings``."""
    if isinstance(lora_attn_modules, str):
        lora_attn_modules = [lora_attn_modules]
    unknown = [m for m in lora_attn_modules if m not in LORA_ATTN_MODULE_NAMES]
    if unknown:
        raise ValueError(
            f"model.lora_attn_modules: unknown module(s) {unknown}; "
            f"choose from {list(LORA_ATTN_MODULE_NAMES)}."
        )
    return LoRASettings(
        lora_attn_modules=tuple(lora_attn_modules),
        apply_lora_to_mlp=apply_lora_to_mlp,
        apply_lora_to_output=apply_lora_to_output,
        lora_rank=lora_rank,
        lora_alpha=float(lora_alpha),
        lora_dropout=lora_dropout,
        use_dora=use_dora,
        quantize_base=quantize_base,
    )


def _linear(
    in_dim: int, out_dim: int, *, bias: bool, adapt: bool, lora: LoRASettings | None
) -> nn.Module:
    if lora is None or not adapt:
        return nn.Linear(in_dim, out_dim, bias=bias)
    from tunesmith.modules.peft import DoRALinear, LoRALinear

    cls = DoRALinear if lora.use_dora else LoRALinear
    return cls(
        in_dim,
        out_dim,
        rank=lora.lora_rank,
        alpha=lora.lora_alpha,
        dropout=lora.lora_dropout,
        use_bias=bias,
        quantize_base=lora.quantize_base,
    )


def _norm(spec: ModelSpec, dim: int) -> RMSNorm:
    return RMSNorm(
        dim, eps=spec.norm_eps, offset=spec.norm_offset, scale_in_fp32=spec.norm_scale_fp32
    )


def _mlp(spec: ModelSpec, f: int, adapt: bool, lora: LoRASettings | None) -> FeedForward:
    d = spec.embed_dim
    return FeedForward(
        gate_proj=_linear(d, f, bias=False, adapt=adapt, lora=lora),
        down_proj=_linear(f, d, bias=False, adapt=adapt, lora=lora),
        up_proj=_linear(d, f, bias=False, adapt=adapt, lora=lora),
        activation=spec.activation,
    )


def _mlp_with_experts(
    spec: ModelSpec, width: int, adapt: bool, lora: LoRASettings | None
) -> FeedForwardWithExperts:
    """Gemma 4's dense MLP with the experts beside it (its own norms around the experts).

    ``apply_lora_to_mlp`` adapts the dense MLP; the experts stay frozen (their per-expert
    adapters have no PEFT export for this layout yet)."""
    dense = _mlp(spec, width, adapt, lora)
    return FeedForwardWithExperts(
        gate_proj=dense.w1,
        down_proj=dense.w2,
        up_proj=dense.w3,
        activation=spec.activation,
        moe=_moe(spec, None),
        dense_out_norm=_norm(spec, spec.embed_dim),
        expert_in_norm=_norm(spec, spec.embed_dim),
        expert_out_norm=_norm(spec, spec.embed_dim),
    )


def _moe(spec: ModelSpec, lora: LoRASettings | None) -> MoE:
    """The spec's mixture-of-experts feed-forward; ``lora.apply_lora_to_mlp`` puts per-expert
    LoRA on the experts (``LoRAGroupedExperts``) and LoRA on the shared expert."""
    d = spec.embed_dim
    adapt = bool(lora and lora.apply_lora_to_mlp)
    expert_cls: Callable[..., GroupedExperts] = GroupedExperts
    if adapt:
        from tunesmith.modules.peft.lora_experts import LoRAGroupedExperts

        expert_cls = partial(LoRAGroupedExperts, rank=lora.lora_rank, alpha=lora.lora_alpha)
    return MoE(
        router=TopKRouter(
            d,
            spec.num_experts,
            spec.experts_per_token,
            scoring=spec.router_scoring,
            norm_topk=spec.router_norm_topk,
            bias=spec.router_bias,
            input_norm_eps=spec.norm_eps if spec.moe_beside_mlp else None,
            per_expert_scale=spec.moe_beside_mlp,
        ),
        experts=expert_cls(
            d,
            spec.moe_intermediate_dim or spec.intermediate_dim,
            spec.num_experts,
            activation=spec.activation,
            bias=spec.expert_bias,
            swiglu_limit=spec.swiglu_limit,
        ),
        shared_expert=(
            _mlp(spec, spec.shared_expert_dim, adapt, lora) if spec.shared_expert_dim else None
        ),
        weight_inputs=spec.router_weights_inputs,
    )


def _qk_norm(spec: ModelSpec, hd: int, nope: bool, heads: int) -> nn.Module | None:
    if spec.qk_norm and spec.qk_norm_across_heads:  # OLMo 2: one norm over all heads
        return HeadsRMSNorm(heads * hd, eps=spec.norm_eps, scale_in_fp32=spec.norm_scale_fp32)
    if spec.qk_norm:
        return _norm(spec, hd)
    if spec.qk_rms_norm and not nope:  # Llama 4: RoPE layers only, no weight
        return WeightlessRMSNorm(spec.norm_eps)
    return None


def _attn_scale(spec: ModelSpec) -> float | None:
    """The softmax scale: Granite's ``attention_multiplier``, Gemma's query scalar, default."""
    if spec.attn_scale is not None:
        return spec.attn_scale
    return spec.query_pre_attn_scalar**-0.5 if spec.query_pre_attn_scalar else None


def _layer(spec: ModelSpec, index: int, lora: LoRASettings | None) -> TransformerSelfAttentionLayer:
    d, hd = spec.embed_dim, spec.layer_head_dim(index)
    h, kv = spec.num_heads, spec.layer_kv_heads(index)
    targets = set(lora.lora_attn_modules) if lora else set()
    nope = index in spec.nope_layers
    mlp_lora = bool(lora and lora.apply_lora_to_mlp)
    sharing = spec.kv_sharing(index)
    reuse = sharing is not None and sharing[0] == "reuse"  # Gemma 4: no k / v of its own
    no_v = reuse or (spec.attn_k_eq_v and spec.is_full_layer(index))
    attn = MultiHeadAttention(
        embed_dim=d,
        num_heads=h,
        num_kv_heads=kv,
        head_dim=hd,
        q_proj=_linear(d, h * hd, bias=spec.qkv_bias, adapt="q_proj" in targets, lora=lora),
        k_proj=None
        if reuse
        else _linear(d, kv * hd, bias=spec.qkv_bias, adapt="k_proj" in targets, lora=lora),
        v_proj=None
        if no_v
        else _linear(d, kv * hd, bias=spec.qkv_bias, adapt="v_proj" in targets, lora=lora),
        output_proj=_linear(
            h * hd, d, bias=spec.out_bias, adapt="output_proj" in targets, lora=lora
        ),
        q_norm=_qk_norm(spec, hd, nope, h),
        k_norm=None if reuse else _qk_norm(spec, hd, nope, kv),
        scale=_attn_scale(spec),
        softcap=spec.attn_softcap,
        sliding_window=spec.layer_window(index),
        sinks=spec.attn_sinks,
        use_rope=not nope,
        chunk_size=None if nope else spec.attn_chunk_size,
        temperature=spec.attn_temperature if nope else None,
        v_norm=WeightlessRMSNorm(spec.norm_eps) if spec.v_norm and not reuse else None,
        kv_sharing=sharing,
    )
    width = spec.intermediate_dim * (2 if reuse and spec.double_wide_mlp else 1)
    if spec.is_moe_layer(index) and spec.moe_beside_mlp:
        mlp: nn.Module = _mlp_with_experts(spec, width, mlp_lora, lora)
    elif spec.is_moe_layer(index):
        mlp = _moe(spec, lora)
    else:
        mlp = _mlp(spec, width, mlp_lora, lora)
    gate = None
    if spec.per_layer_dim:
        gate = PerLayerInputGate(d, spec.per_layer_dim, spec.activation, spec.norm_eps)
    return TransformerSelfAttentionLayer(
        attn=attn,
        mlp=mlp,
        sa_norm=_norm(spec, d) if spec.pre_norms else nn.Identity(),
        mlp_norm=_norm(spec, d) if spec.pre_norms else nn.Identity(),
        sa_scale=_norm(spec, d) if spec.post_norms else None,
        mlp_scale=_norm(spec, d) if spec.post_norms else None,
        residual_multiplier=spec.residual_multiplier,
        per_layer_gate=gate,
        layer_scalar=spec.layer_scalars,
    )


def build_decoder(spec: ModelSpec, lora: LoRASettings | None = None) -> TransformerDecoder:
    """Build the decoder a spec describes, with LoRA / DoRA layers where ``lora`` asks.

    Build under ``torch.device("meta")`` to count parameters without allocating memory.
    """
    if lora is not None and lora.apply_lora_to_output and spec.tie_embeddings:
        raise ValueError(
            "model.apply_lora_to_output=True is not possible: this model ties its output "
            "projection to the token embeddings. Set apply_lora_to_output=False."
        )
    if lora is not None:
        refuse_partial_fused_dora(spec.family, lora.lora_attn_modules, lora.use_dora)
    if lora is not None and lora.apply_lora_to_mlp and spec.num_experts:
        if lora.use_dora or lora.quantize_base:
            raise ValueError(
                "model.apply_lora_to_mlp=True on a mixture-of-experts model puts plain LoRA on "
                "the experts; DoRA / QLoRA experts are not supported: set use_dora / "
                "quantize_base to False or apply_lora_to_mlp=False."
            )
        if lora.lora_dropout:
            raise ValueError(
                f"model.lora_dropout={lora.lora_dropout} with apply_lora_to_mlp=True on a "
                "mixture-of-experts model: expert LoRA has no dropout (as PEFT's): set "
                "lora_dropout: 0.0."
            )
    out_dim = spec.num_classes or spec.vocab_size
    output = None
    if not spec.tie_embeddings or spec.num_classes:
        adapt = bool(lora and lora.apply_lora_to_output)
        output = _linear(spec.embed_dim, out_dim, bias=False, adapt=adapt, lora=lora)
    return TransformerDecoder(
        tok_embeddings=nn.Embedding(spec.vocab_size, spec.embed_dim),
        layers=[_layer(spec, i, lora) for i in range(spec.num_layers)],
        norm=_norm(spec, spec.embed_dim),
        output=output,
        rope=_rope(spec),
        local_rope=_local_rope(spec),
        max_seq_len=spec.max_seq_len,
        embed_scale=spec.embed_dim**0.5 if spec.embed_scale else None,
        final_logit_softcap=spec.final_softcap,
        embed_multiplier=spec.embed_multiplier,
        logits_divisor=spec.logits_divisor,
        per_layer_embeddings=_per_layer_embeddings(spec),
        query_log_scaling=spec.query_log_scaling,
    )


def _per_layer_embeddings(spec: ModelSpec) -> PerLayerEmbeddings | None:
    """Gemma 4's per-layer embeddings, or None."""
    if not spec.per_layer_dim:
        return None
    vocab = spec.per_layer_vocab_size or spec.vocab_size
    return PerLayerEmbeddings(
        vocab, spec.num_layers, spec.per_layer_dim, spec.embed_dim, spec.norm_eps
    )


def _rope(spec: ModelSpec) -> RotaryEmbedding:
    hd = spec.global_head_dim or spec.resolved_head_dim  # Gemma 4: the full layers' width
    if spec.mrope_section is not None:
        return MultimodalRotaryEmbedding(
            hd, spec.rope_base, spec.rope_scaling, spec.mrope_section, spec.mrope_interleaved
        )
    return RotaryEmbedding(hd, spec.rope_base, spec.rope_scaling, spec.rotary_dim)


def _local_rope(spec: ModelSpec) -> RotaryEmbedding | None:
    """The sliding-window layers' own RoPE (Gemma 3), or None when they share the global one."""
    if spec.local_rope_base is None:
        return None
    hd = spec.resolved_head_dim
    return RotaryEmbedding(hd, spec.local_rope_base, spec.local_rope_scaling, spec.rotary_dim)


def model_type_of(spec: ModelSpec) -> str:
    """The conversion ``model_type`` for a spec (``REWARD`` for classifier heads)."""
    return "REWARD" if spec.num_classes else spec.family


def model_builder(name: str, module: str) -> Callable[[], TransformerDecoder]:
    """A torchtune-style zero-argument builder for the size ``name`` (see ``_specs``)."""
    spec = get_spec(name)

    def builder() -> TransformerDecoder:
        return build_decoder(spec)

    builder.__name__ = builder.__qualname__ = name
    builder.__module__ = module
    builder.__doc__ = f"Build ``{name}``: {_describe(spec)}."
    return builder


def lora_model_builder(
    name: str, module: str, *, quantize_base: bool = False, prefix: str = "lora"
) -> Callable[..., TransformerDecoder]:
    """torchtune's ``lora_<name>`` / ``qlora_<name>`` builder for the size ``name``."""
    spec = get_spec(name)
    default_quantize = quantize_base

    def builder(
        lora_attn_modules: Sequence[str],
        apply_lora_to_mlp: bool = False,
        apply_lora_to_output: bool = False,
        lora_rank: int = 8,
        lora_alpha: float = 16,
        lora_dropout: float = 0.0,
        use_dora: bool = False,
        quantize_base: bool = default_quantize,
    ) -> TransformerDecoder:
        settings = lora_settings(
            lora_attn_modules,
            apply_lora_to_mlp=apply_lora_to_mlp,
            apply_lora_to_output=apply_lora_to_output,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            use_dora=use_dora,
            quantize_base=quantize_base,
        )
        return build_decoder(spec, settings)

    builder.__name__ = builder.__qualname__ = f"{prefix}_{name}"
    builder.__module__ = module
    kind = "QLoRA (NF4 base)" if quantize_base else "LoRA"
    builder.__doc__ = (
        f"Build ``{name}`` with {kind} adapters: {_describe(spec)}.\n\n"
        "Args are torchtune's: lora_attn_modules (subset of q_proj, k_proj, v_proj, "
        "output_proj), apply_lora_to_mlp, apply_lora_to_output, lora_rank, lora_alpha, "
        "lora_dropout, use_dora (DoRA instead of LoRA), quantize_base (NF4 frozen base)."
    )
    return builder


def _describe(spec: ModelSpec) -> str:
    return (
        f"{spec.num_layers} layers, d={spec.embed_dim}, {spec.num_heads} heads "
        f"({spec.num_kv_heads} kv), vocab {spec.vocab_size}"
    )


def build_from_hf(
    checkpoint_dir_or_config: Any,
    lora_attn_modules: Sequence[str] | None = None,
    apply_lora_to_mlp: bool = False,
    apply_lora_to_output: bool = False,
    lora_rank: int = 8,
    lora_alpha: float = 16,
    lora_dropout: float = 0.0,
    use_dora: bool = False,
    quantize_base: bool = False,
    **vision_kwargs: Any,
) -> TransformerDecoder:
    """Build the model a Hugging Face checkpoint folder (or config dict) describes.

    With ``lora_attn_modules`` (or ``apply_lora_to_mlp``) set, LoRA/DoRA layers are added as
    in the ``lora_*`` builders (an ``mllama`` config builds Llama 3.2 Vision, a ``qwen2_5_vl``
    one Qwen2.5-VL; with LoRA arguments every part gets adapters). Usable from YAML:
    ``_component_: tunesmith.models.build_from_hf`` with ``checkpoint_dir_or_config: <dir>``.
    A vision model also takes the vision builders' ``decoder_trainable``,
    ``encoder_trainable``, ``fusion_trainable`` and ``image_size`` (which must equal the
    checkpoint's), so a torchtune vision config's model node works with only its
    ``_component_`` swapped.
    """
    hf_type = _hf_model_type(checkpoint_dir_or_config)
    if hf_type in ("mllama", "qwen2_5_vl", "qwen3_vl", "llama4"):  # + Llama 4 with its encoder
        return _build_vision_from_hf(
            checkpoint_dir_or_config,
            vision_kwargs,
            lora_attn_modules=lora_attn_modules,
            apply_lora_to_mlp=apply_lora_to_mlp,
            apply_lora_to_output=apply_lora_to_output,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            use_dora=use_dora,
            quantize_base=quantize_base,
        )
    if vision_kwargs:
        raise TypeError(
            f"build_from_hf got vision arguments {sorted(vision_kwargs)} for a text model "
            "(only a Llama 3.2 Vision checkpoint takes them): remove them"
        )
    spec = spec_from_hf_config(checkpoint_dir_or_config)
    lora = None
    if lora_attn_modules or apply_lora_to_mlp or apply_lora_to_output:
        lora = lora_settings(
            lora_attn_modules or [],
            apply_lora_to_mlp=apply_lora_to_mlp,
            apply_lora_to_output=apply_lora_to_output,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            use_dora=use_dora,
            quantize_base=quantize_base,
        )
    return build_decoder(spec, lora)


def from_hf(checkpoint_dir: Any, **kwargs: Any) -> TransformerDecoder:
    """``build_from_hf`` named for YAML: ``_component_: tunesmith.models.from_hf`` with
    ``checkpoint_dir: <dir>`` builds the model its ``config.json`` describes (any supported
    architecture, dense or mixture of experts); the other arguments are ``build_from_hf``'s.
    """
    return build_from_hf(checkpoint_dir, **kwargs)


def _hf_model_type(config: Any) -> str | None:
    from pathlib import Path

    from tunesmith.models._hf_config import load_hf_config

    if isinstance(config, (str, Path)):
        config = load_hf_config(config)
    cfg = config if isinstance(config, dict) else config.to_dict()
    return cfg.get("model_type")


_VISION_ARGS = ("decoder_trainable", "encoder_trainable", "fusion_trainable", "image_size")


def _build_vision_from_hf(
    config: Any, vision_kwargs: dict[str, Any], **lora_kwargs: Any
) -> nn.Module:
    from pathlib import Path

    from tunesmith.models._convert_llama4 import llama4_spec_from_hf_config
    from tunesmith.models._convert_qwen_vl import qwen_vl_spec_from_hf_config
    from tunesmith.models._convert_vision import mllama_spec_from_hf_config
    from tunesmith.models._hf_config import load_hf_config
    from tunesmith.models.vision_builder import build_deep_fusion, build_early_fusion

    unknown = sorted(set(vision_kwargs) - set(_VISION_ARGS))
    if unknown:
        raise TypeError(f"build_from_hf got unexpected arguments {unknown}")
    if isinstance(config, (str, Path)):
        config = load_hf_config(config)
    if _hf_model_type(config) in ("qwen2_5_vl", "qwen3_vl"):
        spec, build = qwen_vl_spec_from_hf_config(config), build_early_fusion
    elif _hf_model_type(config) == "llama4":
        spec, build = llama4_spec_from_hf_config(config), build_early_fusion
    else:
        spec, build = mllama_spec_from_hf_config(config), build_deep_fusion
    image_size = vision_kwargs.pop("image_size", None)
    tile_size = getattr(spec.encoder, "tile_size", None)  # Llama 3.2 Vision's / 4's tiles
    if image_size is not None and tile_size is not None and int(image_size) != tile_size:
        from tunesmith.config import ConfigError

        raise ConfigError(
            f"model.image_size={image_size} but the checkpoint's tiles are "
            f"{tile_size} px: set model.image_size (and tokenizer.image_size) to {tile_size}",
            key="model.image_size",
        )
    wanted = lora_kwargs["lora_attn_modules"] or lora_kwargs["apply_lora_to_mlp"]
    if not (wanted or lora_kwargs["apply_lora_to_output"]):
        parts = {k: vision_kwargs.get(k, True) for k in _VISION_ARGS[:3]}
        return build(spec, **parts)
    lora = lora_settings(
        **{**lora_kwargs, "lora_attn_modules": lora_kwargs["lora_attn_modules"] or []}
    )
    parts = {k: vision_kwargs.get(k, "lora") for k in _VISION_ARGS[:3]}
    return build(spec, lora=lora, **parts)
