"""``seq_lens``: documents concatenated in one row, attention causal per document.

Reference: transformers run on each document on its own. Families with soft-capped or
sliding-window attention take the block-causal-mask fallback; the rest run SDPA per
document.
"""

from __future__ import annotations

import pytest
import torch

from tunesmith.models import build_decoder, model_type_of, spec_from_hf_config
from tunesmith.models.convert_weights import hf_to_native

try:  # tests/ is a package
    from tests.models._tiny_hf import VOCAB, make_checkpoint, read_checkpoint, tiny_configs
except ImportError:  # rootdir-relative imports
    from tests.models._tiny_hf import VOCAB, make_checkpoint, read_checkpoint, tiny_configs

LENGTHS = [5, 13, 1, 9]


@pytest.mark.parametrize("family", list(tiny_configs()))
def test_documents_match_transformers_per_document(family, tmp_path, device):
    hf = make_checkpoint(family, tmp_path).to(device)
    config, hf_sd = read_checkpoint(tmp_path)
    spec = spec_from_hf_config(config)
    ours = build_decoder(spec).eval()
    ours.load_state_dict(hf_to_native(hf_sd, model_type_of(spec), config), strict=True)
    ours.to(device)
    gen = torch.Generator().manual_seed(3)
    docs = [torch.randint(0, VOCAB, (1, n), generator=gen).to(device) for n in LENGTHS]
    with torch.no_grad():
        expected = torch.cat([hf(d).logits for d in docs], dim=1)
        got = ours(torch.cat(docs, dim=1), seq_lens=LENGTHS)
    assert got.shape == expected.shape == (1, sum(LENGTHS), VOCAB)
    assert (got - expected).abs().max().item() <= 1e-5


def test_seq_lens_must_cover_one_row(tmp_path):
    make_checkpoint("llama3_1", tmp_path)
    config, hf_sd = read_checkpoint(tmp_path)
    spec = spec_from_hf_config(config)
    ours = build_decoder(spec)
    tokens = torch.zeros(1, 10, dtype=torch.long)
    with pytest.raises(ValueError, match="sum to the sequence length 10"):
        ours(tokens, seq_lens=[4, 5])
    with pytest.raises(ValueError, match="batch of one row"):
        ours(torch.zeros(2, 5, dtype=torch.long), seq_lens=[5])
    with pytest.raises(ValueError, match="mask"):
        ours(tokens, seq_lens=[10], mask=torch.ones(1, 10, 10, dtype=torch.bool))
