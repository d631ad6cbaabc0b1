"""Gemma 4 sizes against Google's published parameter counts (meta device).

The model card gives totals of the multimodal checkpoints rounded to 0.1B: 31B "30.7B", 26B
A4B "25.2B total, 3.8B active"; the text decoder alone is checked within 0.6% (its vision
encoder is small). E2B / E4B are published as "effective" counts (2.3B / 4.5B: without the
embedding tables, with the audio / vision encoders), checked as the decoder's parameters
outside its two embedding tables, below the published count by at most the encoders
(~0.45B) and the rounding. Exact equality with transformers' ``Gemma4ForCausalLM`` built from
the same ``text_config`` is ``test_dense_specs``.
"""

from __future__ import annotations

import pytest
import torch

from tunesmith.models import gemma4
from tunesmith.modules.moe import active_parameter_count

TOTALS = {"gemma4_31b": 30.7e9, "gemma4_26b_a4b": 25.2e9}
EFFECTIVE = {"gemma4_e2b": 2.3e9, "gemma4_e4b": 4.5e9}


def _build(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        return getattr(gemma4, name)()


@pytest.mark.parametrize("name", sorted(TOTALS))
def test_totals_match_the_model_card(name):
    model = _build(name)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - TOTALS[name]) <= 0.006 * TOTALS[name], count
    if name == "gemma4_26b_a4b":
        assert abs(active_parameter_count(model) - 3.8e9) <= 0.05e9


@pytest.mark.parametrize("name", sorted(EFFECTIVE))
def test_effective_counts_match_the_model_card(name):
    model = _build(name)
    tables = model.tok_embeddings.weight.numel()
    tables += model.per_layer_embeddings.embeddings.weight.numel()
    rest = sum(p.numel() for p in model.parameters()) - tables
    # the difference: the audio / vision encoders (~0.45B) and the rounding to 0.1B
    assert 0 <= EFFECTIVE[name] - rest <= 0.6e9, rest


def test_every_size_has_lora_and_qlora_builders():
    for name in ("gemma4_e2b", "gemma4_e4b", "gemma4_31b", "gemma4_26b_a4b"):
        assert callable(getattr(gemma4, f"lora_{name}"))
        assert callable(getattr(gemma4, f"qlora_{name}"))
