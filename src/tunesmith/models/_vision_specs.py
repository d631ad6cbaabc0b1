"""Sizes of vision-language models, keyed by torchtune's builder names (numbers from the
released Hugging Face ``config.json`` files)."""

from __future__ import annotations

from tunesmith.models.spec import ModelSpec, RopeScaling
from tunesmith.models.vision_spec import DeepFusionSpec, TiledViTSpec, every_nth_layer

__all__ = ["VISION_SPECS", "get_vision_spec"]

_LLAMA32_VISION_ENCODER = TiledViTSpec(
    embed_dim=1280,
    num_layers=32,
    num_global_layers=8,
    num_heads=16,
    intermediate_dim=5120,
    patch_size=14,
    tile_size=560,
    max_num_tiles=4,
    out_indices=(3, 7, 15, 23, 30),
)


def _llama32_vision(num_layers: int, **kw: object) -> DeepFusionSpec:
    decoder = ModelSpec(
        **{
            "family": "LLAMA3_VISION",
            "vocab_size": 128_256,
            "num_layers": num_layers,
            "num_kv_heads": 8,
            "max_seq_len": 131_072,
            "rope_base": 500_000.0,
            "rope_scaling": RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0),
            "norm_eps": 1e-5,
            **kw,
        }
    )
    return DeepFusionSpec(
        decoder=decoder,
        encoder=_LLAMA32_VISION_ENCODER,
        fusion_layers=every_nth_layer(num_layers, 4),
    )


VISION_SPECS: dict[str, DeepFusionSpec] = {
    # 40 text layers in HF = 32 self-attention + 8 cross-attention
    "llama3_2_vision_11b": _llama32_vision(
        32, num_heads=32, embed_dim=4096, intermediate_dim=14_336
    ),
    # 100 text layers in HF = 80 self-attention + 20 cross-attention
    "llama3_2_vision_90b": _llama32_vision(
        80, num_heads=64, embed_dim=8192, intermediate_dim=28_672
    ),
}


def get_vision_spec(name: str) -> DeepFusionSpec:
    """The spec of a named size (``llama3_2_vision_11b``, ...)."""
    if name not in VISION_SPECS:
        raise KeyError(f"unknown vision model {name!r}; known: {', '.join(sorted(VISION_SPECS))}")
    return VISION_SPECS[name]
