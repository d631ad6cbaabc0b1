"""FusionEmbedding: text rows and extra fusion rows, torchtune's constructor and ``embedding``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tunesmith.modules.fusion import FusionEmbedding


def test_ids_past_the_vocab_read_the_fusion_rows() -> None:
    torch.manual_seed(0)
    emb = FusionEmbedding(vocab_size=6, fusion_vocab_size=3, embed_dim=4)
    tokens = torch.tensor([[0, 5, 6, 8, 2]])
    out = emb(tokens)
    table = torch.cat([emb.weight, emb.fusion_embedding.weight])  # the full [9, 4] table
    torch.testing.assert_close(out, F.embedding(tokens, table), rtol=0, atol=0)
    assert emb.num_embeddings == 9
    assert set(emb.state_dict()) == {"weight", "fusion_embedding.weight"}


def test_embedding_view_shares_the_text_weight() -> None:
    emb = FusionEmbedding(6, 3, 4)
    view = emb.embedding
    assert view.weight is emb.weight
    with torch.no_grad():
        view.weight.fill_(0.25)  # what torchtune's tests do to initialise the text rows
    assert bool((emb(torch.tensor([[1, 2]])) == 0.25).all())
    assert "embedding.weight" not in emb.state_dict()
