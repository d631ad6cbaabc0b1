"""Specs of vision-language models, as plain data (the decoder part is a ``ModelSpec``)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from tunesmith.models.spec import ModelSpec

__all__ = [
    "LLAMA3_2_VISION_ASPECT_RATIOS",
    "DeepFusionSpec",
    "EarlyFusionSpec",
    "Llama4ViTSpec",
    "QwenViTSpec",
    "TiledViTSpec",
    "every_nth_layer",
]

#: (tiles high, tiles wide) of Llama 3.2 Vision, in the order of their aspect_ratio_ids (1-based)
LLAMA3_2_VISION_ASPECT_RATIOS = ((1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (3, 1), (4, 1))


@dataclass(frozen=True)
class TiledViTSpec:
    """A tiled CLIP-style image encoder (``modules.vision_transformer``) and its projection.

    ``num_layers`` local layers, then ``num_global_layers`` gated ones in the projection head;
    ``out_indices`` are the tapped local layers whose outputs join the final state before
    the projection to the decoder's width.
    """

    embed_dim: int
    num_layers: int
    num_global_layers: int
    num_heads: int
    intermediate_dim: int
    patch_size: int
    tile_size: int
    max_num_tiles: int
    out_indices: tuple[int, ...]
    supported_aspect_ratios: tuple[tuple[int, int], ...] = LLAMA3_2_VISION_ASPECT_RATIOS
    in_channels: int = 3
    norm_eps: float = 1e-5
    activation: str = "gelu"
    pad_to_multiple: int = 8

    @property
    def tokens_per_tile(self) -> int:
        """``(tile_size / patch_size) ** 2 + 1`` (patches and the class token)."""
        return (self.tile_size // self.patch_size) ** 2 + 1

    @property
    def output_dim(self) -> int:
        """Width of the concatenated final + tapped states (Mllama's ``vision_output_dim``)."""
        return self.embed_dim * (1 + len(self.out_indices))


@dataclass(frozen=True)
class DeepFusionSpec:
    """An encoder fused into a decoder by cross-attention layers (Llama 3.2 Vision).

    ``decoder.num_layers`` counts the self-attention layers only; ``fusion_layers`` are the
    decoder layers that run a cross-attention layer before themselves;
    ``num_fusion_tokens`` extra embedding rows follow the vocabulary (``<|image|>``, ...).
    """

    decoder: ModelSpec
    encoder: TiledViTSpec
    fusion_layers: tuple[int, ...]
    num_fusion_tokens: int = 8
    family: str = "LLAMA3_VISION"
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        bad = [i for i in self.fusion_layers if not 0 <= i < self.decoder.num_layers]
        if bad:
            raise ValueError(f"fusion_layers {bad} outside the {self.decoder.num_layers} layers")

    def replace(self, **changes: object) -> DeepFusionSpec:
        """A copy with some fields changed."""
        return replace(self, **changes)


def every_nth_layer(num_layers: int, interval: int) -> tuple[int, ...]:
    """Layers ``interval - 1, 2 * interval - 1, ...`` (Mllama: a fusion layer every 4th)."""
    return tuple(range(interval - 1, num_layers, interval))


@dataclass(frozen=True)
class QwenViTSpec:
    """Qwen2.5-VL's / Qwen3-VL's dynamic-resolution ViT (``modules.qwen_vision``) and patch
    merger.

    ``full_attention_layers`` attend over the whole image, the others within windows of
    ``window_size`` pixels (None: no windows); the merger maps ``spatial_merge_size ** 2``
    patches of width ``embed_dim`` to one token of the decoder's width. Qwen2.5-VL's
    defaults; Qwen3-VL sets ``norm="layer"`` (LayerNorm blocks and merger),
    ``gated_mlp=False`` (``fc2(gelu_tanh(fc1(x)))``), ``patch_bias``,
    ``num_position_embeddings`` (a learned ``sqrt(n) x sqrt(n)`` table, interpolated) and
    ``deepstack_layers`` (each with its own merger, see ``modules.qwen_vision``).
    """

    embed_dim: int
    num_layers: int
    num_heads: int
    intermediate_dim: int
    full_attention_layers: tuple[int, ...]
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    in_channels: int = 3
    norm_eps: float = 1e-6
    activation: str = "silu"
    rope_base: float = 10_000.0
    norm: str = "rms"
    gated_mlp: bool = True
    patch_bias: bool = False
    num_position_embeddings: int | None = None
    deepstack_layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.norm not in ("rms", "layer"):
            raise ValueError(f"QwenViTSpec.norm must be 'rms' or 'layer', got {self.norm!r}")
        bad = [i for i in self.deepstack_layers if not 0 <= i < self.num_layers]
        if bad:
            raise ValueError(f"deepstack_layers {bad} outside the {self.num_layers} ViT layers")


@dataclass(frozen=True)
class Llama4ViTSpec:
    """Llama 4's tile encoder (``modules.llama4_vision``) and its projection to the decoder.

    Each ``tile_size`` tile is ``(tile_size / patch_size) ** 2`` patches plus a class token,
    through ``num_layers`` LayerNorm / GELU-MLP layers with 2-D RoPE (``rope_base``); the
    patches (class token dropped) are pixel-shuffled by ``pixel_shuffle_ratio`` (4 patches
    -> 1 token of width ``embed_dim / ratio**2``, which must equal ``intermediate_dim``, as
    in transformers), then ``fc1 -> GELU -> fc2 -> GELU`` (``projector_dim`` wide) and a
    linear map to the decoder's width.
    """

    embed_dim: int
    num_layers: int
    num_heads: int
    intermediate_dim: int
    patch_size: int = 14
    tile_size: int = 336
    max_num_tiles: int = 16
    projector_dim: int = 4096
    projector_output_dim: int = 4096
    pixel_shuffle_ratio: float = 0.5
    rope_base: float = 10_000.0
    in_channels: int = 3

    def __post_init__(self) -> None:
        shuffled = int(self.embed_dim / self.pixel_shuffle_ratio**2)
        if shuffled != self.intermediate_dim:
            raise ValueError(
                f"Llama4ViTSpec: embed_dim / pixel_shuffle_ratio**2 = {shuffled} must equal "
                f"intermediate_dim = {self.intermediate_dim} (transformers' layout)"
            )

    @property
    def patches_per_tile(self) -> int:
        """``(tile_size / patch_size) ** 2`` (without the class token)."""
        return (self.tile_size // self.patch_size) ** 2

    @property
    def tokens_per_tile(self) -> int:
        """Decoder tokens (``<|patch|>`` placeholders) one tile becomes after pixel shuffle."""
        return int(self.patches_per_tile * self.pixel_shuffle_ratio**2)


@dataclass(frozen=True)
class EarlyFusionSpec:
    """An encoder whose tokens replace ``image_token_id`` placeholders (Qwen2.5-VL,
    Qwen3-VL: ``family="QWEN3_VL"``; Llama 4: ``family="LLAMA4"`` with a
    :class:`Llama4ViTSpec` encoder and ``image_token_id`` = ``<|patch|>``).

    A Qwen decoder is a text ``ModelSpec`` with ``mrope_section`` set (M-RoPE; Qwen3-VL's is
    interleaved, with QK-norm); Llama 4's is its mixture-of-experts text decoder.
    """

    decoder: ModelSpec
    encoder: QwenViTSpec | Llama4ViTSpec
    image_token_id: int = 151_655
    video_token_id: int = 151_656
    vision_start_token_id: int = 151_652
    vision_end_token_id: int = 151_653
    family: str = "QWEN2_5_VL"

    def replace(self, **changes: object) -> EarlyFusionSpec:
        """A copy with some fields changed."""
        return replace(self, **changes)
