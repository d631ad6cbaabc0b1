"""T5 model builders with torchtune's names."""

from __future__ import annotations

from pathlib import Path

from tunesmith.models.t5._component_builders import t5_encoder
from tunesmith.models.t5._encoder import T5Encoder
from tunesmith.models.t5._tokenizer import T5Tokenizer

__all__ = ["t5_tokenizer", "t5_v1_1_xxl_encoder"]


def t5_v1_1_xxl_encoder(max_seq_len: int = 512) -> T5Encoder:
    """The encoder of T5 v1.1 XXL (4096 wide, 24 layers, 64 heads of 64, MLP 10240)."""
    return t5_encoder(
        embed_dim=4096,
        mlp_dim=10240,
        num_heads=64,
        head_dim=64,
        num_layers=24,
        rel_pos_num_buckets=32,
        rel_pos_max_dist=128,
        vocab_size=32128,
        norm_eps=1e-6,
        max_seq_len=max_seq_len,
    )


def t5_tokenizer(path: str | Path, max_seq_len: int = 512, truncate: bool = True) -> T5Tokenizer:
    """T5's tokenizer from its SentencePiece model (see :class:`T5Tokenizer`)."""
    return T5Tokenizer(path, max_seq_len=max_seq_len, truncate=truncate)
