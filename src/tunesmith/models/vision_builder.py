"""``DeepFusionSpec`` (+ optional LoRA settings per part) -> ``DeepFusionModel``.

The decoder's self-attention layers come from :func:`tunesmith.models.builder.build_decoder`
(the text models' code); this module adds the ViT, the projection head, the cross-attention
layers and the fusion embedding.

Parts (torchtune's ``*_trainable`` arguments): ``encoder`` = ``encoder.clip``, ``fusion`` =
``encoder.projection`` + every ``fusion_layer`` + ``tok_embeddings.fusion_embedding``,
``decoder`` = everything else of the decoder. Each is ``True`` / ``"full"`` (trainable),
``False`` / ``"frozen"`` (``requires_grad=False``) or ``"lora"`` (LoRA adapters; the base
weights frozen).
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from tunesmith.models.builder import _layer, _linear, build_decoder
from tunesmith.models.spec import LoRASettings, ModelSpec
from tunesmith.models.vision_spec import (
    DeepFusionSpec,
    EarlyFusionSpec,
    Llama4ViTSpec,
    QwenViTSpec,
    TiledViTSpec,
)
from tunesmith.modules import (
    FeedForward,
    MultiHeadAttention,
    RMSNorm,
    TransformerSelfAttentionLayer,
)
from tunesmith.modules.fusion import (
    DeepFusionModel,
    FusionEmbedding,
    FusionLayer,
    Llama3VisionEncoder,
    Llama3VisionProjectionHead,
    TransformerCrossAttentionLayer,
)
from tunesmith.modules.llama4_vision import (
    Llama4EarlyFusionModel,
    Llama4VisionEncoder,
    Llama4VisionProjection,
    Llama4VisionTransformer,
)
from tunesmith.modules.qwen_vision import PatchMerger, Qwen2_5_VLModel, QwenVisionTransformer
from tunesmith.modules.vision_transformer import (
    CLSEmbedding,
    TanhGate,
    TiledTokenPositionalEmbedding,
    TilePositionalEmbedding,
    VisionTransformer,
)

__all__ = [
    "build_deep_fusion",
    "build_early_fusion",
    "build_llama4_vision_encoder",
    "build_qwen_vision_encoder",
    "build_fusion_decoder",
    "build_tiled_vision_encoder",
    "part_mode",
    "set_part_trainable",
]

_MODES = {True: "full", False: "frozen", "full": "full", "frozen": "frozen", "lora": "lora"}


def part_mode(name: str, value: Any) -> str:
    """Normalise a ``*_trainable`` argument to ``"full"``, ``"frozen"`` or ``"lora"``."""
    key = value.lower() if isinstance(value, str) else value
    if isinstance(key, str) or isinstance(key, bool):
        mode = _MODES.get(key)
        if mode is not None:
            return mode
    raise ValueError(f"model.{name}: {value!r} is not one of True, False, 'full', 'lora', 'frozen'")


def _vit_layer(
    spec: TiledViTSpec | Llama4ViTSpec,
    lora: LoRASettings | None,
    gated: bool,
    attn_bias: bool = False,
) -> nn.Module:
    """A CLIP-style ViT layer: LayerNorms, ``fc2(act(fc1(x)))`` (biased), attention with
    ``attn_bias`` projections (Llama 3.2 Vision: none, Llama 4: all); ``gated`` adds tanh
    gates (Llama 3.2 Vision's global layers)."""
    d, h, f = spec.embed_dim, spec.num_heads, spec.intermediate_dim
    hd = d // h
    targets = set(lora.lora_attn_modules) if lora else set()
    mlp_lora = bool(lora and lora.apply_lora_to_mlp)
    b = attn_bias
    attn = MultiHeadAttention(
        embed_dim=d,
        num_heads=h,
        num_kv_heads=h,
        head_dim=hd,
        q_proj=_linear(d, d, bias=b, adapt="q_proj" in targets, lora=lora),
        k_proj=_linear(d, d, bias=b, adapt="k_proj" in targets, lora=lora),
        v_proj=_linear(d, d, bias=b, adapt="v_proj" in targets, lora=lora),
        output_proj=_linear(d, d, bias=b, adapt="output_proj" in targets, lora=lora),
    )
    mlp = FeedForward(
        gate_proj=_linear(d, f, bias=True, adapt=mlp_lora, lora=lora),
        down_proj=_linear(f, d, bias=True, adapt=mlp_lora, lora=lora),
        up_proj=None,
        activation=getattr(spec, "activation", "gelu"),
    )
    eps = getattr(spec, "norm_eps", 1e-5)
    return TransformerSelfAttentionLayer(
        attn=attn,
        mlp=mlp,
        sa_norm=nn.LayerNorm(d, eps=eps),
        mlp_norm=nn.LayerNorm(d, eps=eps),
        sa_scale=TanhGate(math.pi / 4) if gated else None,
        mlp_scale=TanhGate(math.pi / 4) if gated else None,
    )


def build_tiled_vision_encoder(
    spec: TiledViTSpec,
    decoder_dim: int,
    encoder_lora: LoRASettings | None = None,
    fusion_lora: LoRASettings | None = None,
) -> Llama3VisionEncoder:
    """The ViT (``clip``) and projection head (``projection``) a spec describes."""
    d, ratios = spec.embed_dim, len(spec.supported_aspect_ratios)
    clip = VisionTransformer(
        conv=nn.Conv2d(spec.in_channels, d, spec.patch_size, stride=spec.patch_size, bias=False),
        cls_token_embedding=CLSEmbedding(d),
        token_pos_embedding=TiledTokenPositionalEmbedding(
            ratios, spec.max_num_tiles, spec.tokens_per_tile, d
        ),
        pre_tile_pos_embed=TilePositionalEmbedding(ratios, spec.max_num_tiles, d),
        post_tile_pos_embed=TilePositionalEmbedding(ratios, spec.max_num_tiles, d),
        ln_pre=nn.LayerNorm(d),
        ln_post=nn.LayerNorm(d),
        layers=[_vit_layer(spec, encoder_lora, gated=False) for _ in range(spec.num_layers)],
        out_indices=spec.out_indices,
        pad_to_multiple=spec.pad_to_multiple,
    )
    adapt_out = bool(fusion_lora and fusion_lora.apply_lora_to_output)
    projection = Llama3VisionProjectionHead(
        layers=[_vit_layer(spec, fusion_lora, gated=True) for _ in range(spec.num_global_layers)],
        output=_linear(spec.output_dim, decoder_dim, bias=True, adapt=adapt_out, lora=fusion_lora),
    )
    return Llama3VisionEncoder(clip, projection, spec.supported_aspect_ratios)


def _cross_layer(spec: ModelSpec, lora: LoRASettings | None) -> TransformerCrossAttentionLayer:
    # a self-attention layer's projections, norms and MLP, rewired as cross-attention
    parts = _layer(spec.replace(qk_norm=True, post_norms=False), 0, lora)
    return TransformerCrossAttentionLayer(
        attn=parts.attn, mlp=parts.mlp, ca_norm=parts.sa_norm, mlp_norm=parts.mlp_norm
    )


def build_fusion_decoder(
    spec: DeepFusionSpec,
    decoder_lora: LoRASettings | None = None,
    fusion_lora: LoRASettings | None = None,
) -> nn.Module:
    """The text decoder with a cross-attention layer before each of ``spec.fusion_layers``."""
    dec = spec.decoder
    decoder = build_decoder(dec, decoder_lora)
    decoder.tok_embeddings = FusionEmbedding(dec.vocab_size, spec.num_fusion_tokens, dec.embed_dim)
    for i in spec.fusion_layers:
        decoder.layers[i] = FusionLayer(decoder.layers[i], _cross_layer(dec, fusion_lora))
    return decoder


def set_part_trainable(model: DeepFusionModel, part: str, mode: str) -> None:
    """Apply ``mode`` (``full`` / ``frozen`` / ``lora``) to a part's parameters."""
    from tunesmith.modules.peft import is_adapter_key

    for name, param in _part_parameters(model, part):
        param.requires_grad_(mode == "full" or (mode == "lora" and is_adapter_key(name)))


def _is_fusion(name: str) -> bool:
    return (
        name.startswith("encoder.projection.")
        or name.startswith("encoder.merger.")
        or name.startswith("encoder.deepstack_mergers.")
        or ".fusion_layer." in name
        or name.startswith("decoder.tok_embeddings.fusion_embedding.")
    )


def _part_parameters(model: nn.Module, part: str) -> list[tuple[str, nn.Parameter]]:
    out = []
    for name, param in model.named_parameters():
        if _is_fusion(name):
            owner = "fusion"
        elif name.startswith("encoder."):
            owner = "encoder"
        else:
            owner = "decoder"
        if owner == part:
            out.append((name, param))
    return out


def build_deep_fusion(
    spec: DeepFusionSpec,
    *,
    decoder_trainable: Any = False,
    encoder_trainable: Any = True,
    fusion_trainable: Any = True,
    lora: LoRASettings | None = None,
) -> DeepFusionModel:
    """Build the model; parts in ``"lora"`` mode get adapters per ``lora`` (required then).

    Build under ``torch.device("meta")`` to count parameters without allocating memory.
    """
    modes = {
        "decoder": part_mode("decoder_trainable", decoder_trainable),
        "encoder": part_mode("encoder_trainable", encoder_trainable),
        "fusion": part_mode("fusion_trainable", fusion_trainable),
    }
    if lora is None and "lora" in modes.values():
        raise ValueError("a part is 'lora' but no LoRA settings were given")
    per_part = {k: lora if m == "lora" else None for k, m in modes.items()}
    encoder = build_tiled_vision_encoder(
        spec.encoder, spec.decoder.embed_dim, per_part["encoder"], per_part["fusion"]
    )
    decoder = build_fusion_decoder(spec, per_part["decoder"], per_part["fusion"])
    model = DeepFusionModel(decoder=decoder, encoder=encoder)
    for part, mode in modes.items():
        set_part_trainable(model, part, mode)
    if lora is not None:  # a LoRA recipe trains exactly the adapter params: list the full ones
        model.trainable_with_adapters = tuple(
            name
            for part, mode in modes.items()
            if mode == "full"
            for name, _ in _part_parameters(model, part)
        )
    return model


def _qwen_norm(spec: QwenViTSpec, dim: int, eps: float | None = None) -> nn.Module:
    eps = spec.norm_eps if eps is None else eps
    return RMSNorm(dim, eps=eps) if spec.norm == "rms" else nn.LayerNorm(dim, eps=eps)


def _qwen_vit_layer(spec: QwenViTSpec, lora: LoRASettings | None) -> nn.Module:
    d, h, f = spec.embed_dim, spec.num_heads, spec.intermediate_dim
    # HF (and so PEFT) holds the ViT's q/k/v as one fused ``qkv``: separate q/k/v adapters
    # could not be saved, so the ViT adapts only ``output_proj`` (HF ``proj``) and the MLP
    targets = set(lora.lora_attn_modules) & {"output_proj"} if lora else set()
    mlp_lora = bool(lora and lora.apply_lora_to_mlp)
    attn = MultiHeadAttention(
        embed_dim=d,
        num_heads=h,
        num_kv_heads=h,
        head_dim=d // h,
        q_proj=_linear(d, d, bias=True, adapt="q_proj" in targets, lora=lora),
        k_proj=_linear(d, d, bias=True, adapt="k_proj" in targets, lora=lora),
        v_proj=_linear(d, d, bias=True, adapt="v_proj" in targets, lora=lora),
        output_proj=_linear(d, d, bias=True, adapt="output_proj" in targets, lora=lora),
    )
    mlp = FeedForward(
        gate_proj=_linear(d, f, bias=True, adapt=mlp_lora, lora=lora),
        down_proj=_linear(f, d, bias=True, adapt=mlp_lora, lora=lora),
        up_proj=_linear(d, f, bias=True, adapt=mlp_lora, lora=lora) if spec.gated_mlp else None,
        activation=spec.activation,
    )
    return TransformerSelfAttentionLayer(
        attn=attn, mlp=mlp, sa_norm=_qwen_norm(spec, d), mlp_norm=_qwen_norm(spec, d)
    )


def build_qwen_vision_encoder(
    spec: QwenViTSpec,
    decoder_dim: int,
    encoder_lora: LoRASettings | None = None,
    fusion_lora: LoRASettings | None = None,
) -> QwenVisionTransformer:
    """Qwen2.5-VL's / Qwen3-VL's ViT, patch merger (``merger``) and DeepStack mergers. With
    ``encoder_lora`` the ViT's layers adapt ``output_proj`` (when listed) and, with
    ``apply_lora_to_mlp``, the MLP; never q/k/v (fused in HF / PEFT files)."""
    d, m = spec.embed_dim, spec.spatial_merge_size
    k = (spec.temporal_patch_size, spec.patch_size, spec.patch_size)
    wide = d * m * m
    adapt = bool(fusion_lora and fusion_lora.apply_lora_to_mlp)

    def merger(postshuffle: bool) -> PatchMerger:
        return PatchMerger(
            norm=_qwen_norm(spec, wide if postshuffle else d, eps=1e-6),
            fc1=_linear(wide, wide, bias=True, adapt=adapt, lora=fusion_lora),
            fc2=_linear(wide, decoder_dim, bias=True, adapt=adapt, lora=fusion_lora),
            merge=m,
            postshuffle_norm=postshuffle,
        )

    n_pos = spec.num_position_embeddings
    return QwenVisionTransformer(
        patch_embed=nn.Conv3d(spec.in_channels, d, k, stride=k, bias=spec.patch_bias),
        layers=[_qwen_vit_layer(spec, encoder_lora) for _ in range(spec.num_layers)],
        merger=merger(False),
        head_dim=d // spec.num_heads,
        patch_size=spec.patch_size,
        temporal_patch_size=spec.temporal_patch_size,
        in_channels=spec.in_channels,
        spatial_merge_size=m,
        window_size=spec.window_size,
        full_attention_layers=spec.full_attention_layers,
        rope_base=spec.rope_base,
        pos_embed=nn.Embedding(n_pos, d) if n_pos else None,
        deepstack_layers=spec.deepstack_layers,
        deepstack_mergers=[merger(True) for _ in spec.deepstack_layers],
    )


def build_llama4_vision_encoder(
    spec: Llama4ViTSpec,
    decoder_dim: int,
    encoder_lora: LoRASettings | None = None,
    fusion_lora: LoRASettings | None = None,
) -> Llama4VisionEncoder:
    """Llama 4's tile encoder (``clip``) and projection (``projection``: fc1, fc2 and the
    output map; with ``fusion_lora`` all three get adapters when ``apply_lora_to_output`` is
    set, as torchtune's ``lora_llama4_vision_projection_head``)."""
    p, c, d = spec.patch_size, spec.in_channels, spec.embed_dim
    clip = Llama4VisionTransformer(
        patch_embed=nn.Linear(c * p * p, d, bias=False),
        layers=[
            _vit_layer(spec, encoder_lora, gated=False, attn_bias=True)
            for _ in range(spec.num_layers)
        ],
        patch_size=p,
        tile_size=spec.tile_size,
        head_dim=d // spec.num_heads,
        rope_base=spec.rope_base,
    )
    out = bool(fusion_lora and fusion_lora.apply_lora_to_output)
    pd, po = spec.projector_dim, spec.projector_output_dim
    projection = Llama4VisionProjection(
        fc1=_linear(spec.intermediate_dim, pd, bias=False, adapt=out, lora=fusion_lora),
        fc2=_linear(pd, po, bias=False, adapt=out, lora=fusion_lora),
        output=_linear(po, decoder_dim, bias=False, adapt=out, lora=fusion_lora),
        ratio=spec.pixel_shuffle_ratio,
    )
    return Llama4VisionEncoder(clip, projection)


def build_early_fusion(
    spec: EarlyFusionSpec,
    *,
    decoder_trainable: Any = True,
    encoder_trainable: Any = False,
    fusion_trainable: Any = True,
    lora: LoRASettings | None = None,
) -> Qwen2_5_VLModel | Llama4EarlyFusionModel:
    """Build a Qwen2.5-VL / Qwen3-VL / Llama 4 model; parts as in :func:`build_deep_fusion`
    (``fusion`` = the patch merger and the DeepStack mergers; Llama 4's projection). Build
    under ``torch.device("meta")`` to count parameters."""
    modes = {
        "decoder": part_mode("decoder_trainable", decoder_trainable),
        "encoder": part_mode("encoder_trainable", encoder_trainable),
        "fusion": part_mode("fusion_trainable", fusion_trainable),
    }
    if lora is None and "lora" in modes.values():
        raise ValueError("a part is 'lora' but no LoRA settings were given")
    per_part = {k: lora if m == "lora" else None for k, m in modes.items()}
    decoder = build_decoder(spec.decoder, per_part["decoder"])
    model: Qwen2_5_VLModel | Llama4EarlyFusionModel
    if isinstance(spec.encoder, Llama4ViTSpec):
        llama4 = build_llama4_vision_encoder(
            spec.encoder, spec.decoder.embed_dim, per_part["encoder"], per_part["fusion"]
        )
        model = Llama4EarlyFusionModel(
            decoder=decoder, encoder=llama4, image_token_id=spec.image_token_id
        )
    else:
        encoder = build_qwen_vision_encoder(
            spec.encoder, spec.decoder.embed_dim, per_part["encoder"], per_part["fusion"]
        )
        model = Qwen2_5_VLModel(
            decoder=decoder, encoder=encoder, image_token_id=spec.image_token_id
        )
    for part, mode in modes.items():
        set_part_trainable(model, part, mode)  # type: ignore[arg-type]
    if lora is not None:
        model.trainable_with_adapters = tuple(
            name
            for part, mode in modes.items()
            if mode == "full"
            for name, _ in _part_parameters(model, part)
        )
    return model
