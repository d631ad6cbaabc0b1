"""tunesmith.models.clip against transformers: the text encoder (``CLIPTextModel``), the
tokenizer (``CLIPTokenizer``) and the grid-layout tile / token position embeddings
(Mllama's per-aspect-ratio embeddings, the same weights in transformers' layout)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunesmith.models._convert_vision_meta import _grid_to_rows, meta_aspect_ratios
from tunesmith.models.clip import (
    CLIPTokenizer,
    TiledTokenPositionalEmbedding,
    TilePositionalEmbedding,
    clip_text_encoder,
    clip_text_hf_to_tune,
)

transformers = pytest.importorskip("transformers")

MERGES = "torchtune_tests_suite/tests/assets/tiny_bpe_merges.txt"  # under the shared assets
VOCAB, DIM, HEADS, LAYERS, CTX, EOT = 99, 32, 4, 2, 16, 98


def _hf_text_model() -> object:
    cfg = transformers.CLIPTextConfig(
        vocab_size=VOCAB,
        hidden_size=DIM,
        intermediate_size=4 * DIM,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        max_position_embeddings=CTX,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        eos_token_id=EOT,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = transformers.CLIPTextModel(cfg).eval()
    with torch.no_grad():  # transformers zero-inits biases / unit-inits norms: randomise all
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("seq_len", [CTX, 9])
def test_text_encoder_equals_transformers_pooled_output(seq_len: int) -> None:
    hf = _hf_text_model()
    ours = clip_text_encoder(
        embed_dim=DIM, num_heads=HEADS, num_layers=LAYERS, vocab_size=VOCAB, max_seq_len=CTX
    )
    ours.eot_token = EOT
    ours.load_state_dict(clip_text_hf_to_tune({"logit_scale": torch.ones(()), **hf.state_dict()}))
    tokens = torch.randint(0, EOT, (3, seq_len), generator=torch.Generator().manual_seed(1))
    tokens[0, -1] = EOT
    tokens[1, 3] = EOT
    tokens[1, 6] = EOT  # the first end-of-text is pooled
    with torch.no_grad():
        expected = hf(input_ids=tokens).pooler_output
        actual = ours.eval()(tokens)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_text_encoder_refuses_long_input_and_unknown_keys() -> None:
    ours = clip_text_encoder(embed_dim=8, num_heads=2, num_layers=1, vocab_size=10, max_seq_len=4)
    with pytest.raises(ValueError, match="max_seq_len"):
        ours(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown CLIP text key 'text_model.encoder.x'"):
        clip_text_hf_to_tune({"text_model.encoder.x": torch.zeros(1)})


@pytest.fixture(scope="module")
def merges_file(assets: Path) -> Path:
    path = assets / MERGES
    if not path.is_file():
        pytest.skip(f"torchtune's test assets not found ({path})")
    return path


TEXTS = [
    "a cow jumping over the moon",
    "Hello, World!!  It's 2024... don't STOP",
    "naïve café ünïcödé 東京 emoji 🙂 x1 y22 z333",
    "tabs\tand\nnew lines, <|endoftext|> inside",
    "",
]


def test_tokenizer_equals_transformers(merges_file: Path) -> None:
    ours = CLIPTokenizer(merges_file)
    lines = merges_file.read_text(encoding="utf-8").splitlines()
    merges = [
        tuple(line.split())
        for i, line in enumerate(lines)
        if line.strip() and not (i == 0 and line.startswith("#version"))
    ]
    hf = transformers.CLIPTokenizer(vocab=dict(ours.encoder), merges=merges)
    for text in TEXTS:
        assert ours.encode(text) == hf(text)["input_ids"], text
    assert ours.decode(ours.encode("a cow")) == "<|startoftext|>a cow <|endoftext|>"


def test_tokenizer_truncates_keeping_the_end_token(merges_file: Path) -> None:
    tok = CLIPTokenizer(merges_file, max_seq_len=6)
    ids = tok.encode("one two three four five six seven")
    assert len(ids) == 6 and ids[0] == tok.sot_token and ids[-1] == tok.eot_token
    with pytest.raises(ValueError, match="truncate=True"):
        CLIPTokenizer(merges_file, max_seq_len=6, truncate=False).encode("one two three four five")


def _mllama_config() -> object:
    return transformers.MllamaVisionConfig(
        hidden_size=8, image_size=28, patch_size=14, max_num_tiles=4, attention_heads=2
    )


def test_grid_position_embeddings_equal_transformers_mllama() -> None:
    """torchtune's grids, laid out per aspect ratio, are transformers' Mllama embeddings."""
    from transformers.models.mllama import modeling_mllama as m

    cfg = _mllama_config()
    ratios = meta_aspect_ratios(4)
    torch.manual_seed(0)
    tile = TilePositionalEmbedding(max_num_tiles=4, embed_dim=8)
    token = TiledTokenPositionalEmbedding(max_num_tiles=4, embed_dim=8, tile_size=28, patch_size=14)
    for module in (tile, token):
        module.gate.data.fill_(0.7)
    hf_tile = m.MllamaPrecomputedAspectRatioEmbedding(cfg, is_gated=True)
    hf_token = m.MllamaPrecomputedPositionEmbedding(cfg)
    with torch.no_grad():
        hf_tile.embedding.weight.copy_(_grid_to_rows(tile.embedding, ratios))
        hf_tile.gate.copy_(tile.gate)
        hf_token.embedding.copy_(token.local_token_positional_embedding)
        hf_token.tile_embedding.weight.copy_(
            _grid_to_rows(token.global_token_positional_embedding, ratios)
        )
        hf_token.gate.copy_(token.gate)
    aspect_ratio = torch.tensor([[1, 1], [2, 2], [1, 3], [4, 1], [2, 1]])
    ids = torch.tensor([ratios.index(tuple(r)) + 1 for r in aspect_ratio.tolist()])
    x = torch.randn(5, 4, 5, 8)
    with torch.no_grad():
        # transformers adds zeros to the padding tiles; torchtune adds nothing there
        torch.testing.assert_close(tile(x, aspect_ratio), hf_tile(x, ids))
        torch.testing.assert_close(token(x, aspect_ratio), hf_token(x, ids))


def test_load_interpolates_to_the_model_sizes_and_keeps_same_sizes_exact() -> None:
    torch.manual_seed(0)
    small = TiledTokenPositionalEmbedding(max_num_tiles=2, embed_dim=4, tile_size=4, patch_size=2)
    big = TiledTokenPositionalEmbedding(max_num_tiles=3, embed_dim=4, tile_size=6, patch_size=2)
    big.load_state_dict(small.state_dict())
    assert big.global_token_positional_embedding.shape == (3, 3, 10, 4)
    # corners of the grids are kept by align_corners interpolation
    torch.testing.assert_close(
        big.local_token_positional_embedding[[0, 1]],
        small.local_token_positional_embedding[[0, 1]],
    )
    same = TilePositionalEmbedding(max_num_tiles=2, embed_dim=4)
    state = TilePositionalEmbedding(max_num_tiles=2, embed_dim=4).state_dict()
    same.load_state_dict(state)
    torch.testing.assert_close(same.embedding, state["embedding"])


def test_single_tile_vision_encoder_equals_transformers_clip_vision_model() -> None:
    """One tile, no tile embeddings: torchtune's CLIP ViT is transformers' CLIPVisionModel
    (its class token after ``ln_post`` is the pooled output; the taps are the inputs of the
    layers, transformers' ``hidden_states``)."""
    from tunesmith.models.clip import QuickGELU, clip_vision_encoder

    cfg = transformers.CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=28,
        patch_size=7,
        hidden_act="quick_gelu",
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    hf = transformers.CLIPVisionModel(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.2)
    ours = clip_vision_encoder(
        tile_size=28,
        patch_size=7,
        embed_dim=16,
        num_layers=2,
        num_heads=4,
        activation=QuickGELU,
        max_num_tiles=1,
        out_indices=[0, 1],
    ).eval()
    top = {
        "embeddings.patch_embedding.weight": "conv.weight",
        "embeddings.class_embedding": "cls_token_embedding.weight",
        "embeddings.position_embedding.weight": "token_pos_embedding.positional_embedding",
    }
    state = {}
    for key, value in hf.state_dict().items():
        key = key.removeprefix("vision_model.")
        if key == "embeddings.position_ids":
            continue
        key = top.get(key, key)
        key = key.replace("pre_layrnorm", "ln_pre").replace("post_layernorm", "ln_post")
        for a, b in [("encoder.layers", "layers"), ("self_attn.out_proj", "attn.output_proj"),
                     ("self_attn", "attn"), ("layer_norm1", "sa_norm"),
                     ("layer_norm2", "mlp_norm"), ("mlp.fc1", "mlp.w1"), ("mlp.fc2", "mlp.w2")]:  # fmt: skip
            key = key.replace(a, b)
        state[key] = value
    ours.load_state_dict(state)
    images = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        out = hf(pixel_values=images, output_hidden_states=True)
        x, taps = ours(images[:, None, None])  # x [b, 1 image, 1 tile, L, d]
    torch.testing.assert_close(x[:, 0, 0, 0], out.pooler_output, atol=1e-5, rtol=1e-5)
    for tap, expected in zip(taps, out.hidden_states[:2]):
        torch.testing.assert_close(tap[:, 0, 0], expected, atol=1e-5, rtol=1e-5)
