"""tunesmith.models.t5 against transformers: the encoder (``T5EncoderModel``, gated GELU as
torchtune builds it) through ``t5_encoder_hf_to_tune``; the tokenizer against SentencePiece
itself (T5's ids are the model's pieces and ``</s>``, no BOS)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tunesmith.models.t5 import t5_encoder, t5_encoder_hf_to_tune, t5_tokenizer

transformers = pytest.importorskip("transformers")

VOCAB, DIM, MLP, HEADS, LAYERS, BUCKETS, MAX_DIST, CTX = 64, 16, 24, 4, 2, 8, 12, 20


def _hf_encoder() -> object:
    cfg = transformers.T5Config(
        vocab_size=VOCAB,
        d_model=DIM,
        d_kv=DIM // HEADS,
        d_ff=MLP,
        num_layers=LAYERS,
        num_heads=HEADS,
        relative_attention_num_buckets=BUCKETS,
        relative_attention_max_distance=MAX_DIST,
        feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6,
        dropout_rate=0.0,
        attn_implementation="eager",
    )
    cfg.dense_act_fn = "gelu"  # torchtune's T5 uses exact GELU ("gated-gelu" means tanh's)
    torch.manual_seed(0)
    model = transformers.T5EncoderModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


@pytest.mark.parametrize("seq_len", [CTX, 7])
def test_encoder_equals_transformers_hidden_states(seq_len: int) -> None:
    hf = _hf_encoder()
    ours = t5_encoder(
        embed_dim=DIM,
        mlp_dim=MLP,
        num_heads=HEADS,
        head_dim=DIM // HEADS,
        num_layers=LAYERS,
        rel_pos_num_buckets=BUCKETS,
        rel_pos_max_dist=MAX_DIST,
        vocab_size=VOCAB,
        norm_eps=1e-6,
        max_seq_len=CTX,
    )
    ours.load_state_dict(t5_encoder_hf_to_tune(hf.state_dict()))
    tokens = torch.randint(0, VOCAB, (2, seq_len), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(input_ids=tokens).last_hidden_state
        actual = ours.eval()(tokens)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="max_seq_len"):
        ours(torch.zeros(1, CTX + 1, dtype=torch.long))


def test_tokenizer_is_sentencepiece_plus_eos_truncated(assets: Path) -> None:
    import sentencepiece as spm

    path = assets / "torchtune_tests_suite/tests/assets/sentencepiece.model"
    if not path.is_file():
        pytest.skip(f"torchtune's test assets not found ({path})")
    ours = t5_tokenizer(str(path), max_seq_len=8)
    sp = spm.SentencePieceProcessor(model_file=str(path))
    for text in ["a cow jumping over the moon", "Hello, World! 123", "a helpful AI"]:
        expected = [*sp.encode(text), sp.eos_id()]
        if len(expected) > 8:
            expected = [*expected[:7], sp.eos_id()]
        assert ours.encode(text) == expected, text
    assert ours({"text": "hello world"})["tokens"][-1] == ours.eos_id
    assert ours.decode(ours.encode("a helpful AI")) == "a helpful AI"
    with pytest.raises(ValueError, match="truncate=True"):
        t5_tokenizer(str(path), max_seq_len=3, truncate=False).encode("a cow jumping")
