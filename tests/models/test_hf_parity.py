"""Every family: logits equal transformers' and HF -> native -> HF is bit-exact."""

from __future__ import annotations

import pytest
import torch

from tests.models._tiny_hf import VOCAB, make_checkpoint, read_checkpoint, tiny_configs
from tunesmith.models import build_decoder, build_from_hf, model_type_of, spec_from_hf_config
from tunesmith.models.convert_weights import hf_to_native, native_to_hf
from tunesmith.modules import padding_to_causal_mask

FAMILIES = list(tiny_configs())


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, tmp_path_factory, device):
    """(transformers model, our model loaded through the HF conversion, config, HF state dict)."""
    directory = tmp_path_factory.mktemp(request.param)
    hf = make_checkpoint(request.param, directory)
    config, hf_sd = read_checkpoint(directory)
    spec = spec_from_hf_config(config)
    ours = build_decoder(spec).eval()
    ours.load_state_dict(hf_to_native(hf_sd, model_type_of(spec), config), strict=True)
    return hf.to(device), ours.to(device), config, hf_sd


def test_logits_match_transformers(pair, device):
    hf, ours, _, _ = pair
    tokens = torch.randint(0, VOCAB, (2, 37), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        expected = hf(tokens).logits
        got = ours(tokens)
    assert got.shape == expected.shape == (2, 37, VOCAB)
    assert (got - expected).abs().max().item() <= 1e-5


def test_left_padded_logits_match_transformers(pair, device):
    hf, ours, _, _ = pair
    tokens = torch.randint(3, VOCAB, (2, 37), generator=torch.Generator().manual_seed(2)).to(device)
    attention_mask = torch.ones(2, 37, dtype=torch.long, device=device)
    attention_mask[0, :9] = 0
    tokens[0, :9] = 0
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = hf(tokens, attention_mask=attention_mask, position_ids=position_ids).logits
        got = ours(
            tokens, mask=padding_to_causal_mask(attention_mask.bool()), input_pos=position_ids
        )
    real = attention_mask.bool()
    assert torch.isfinite(got).all()
    assert (got[real] - expected[real]).abs().max().item() <= 1e-5


def test_hf_native_hf_round_trip_is_bit_exact(pair):
    _, ours, config, hf_sd = pair
    spec = spec_from_hf_config(config)
    native = hf_to_native(hf_sd, model_type_of(spec), config)
    back = native_to_hf(native, model_type_of(spec), config)
    assert list(sorted(back)) == list(sorted(hf_sd))
    for key, value in hf_sd.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key
    assert set(native) == set(ours.state_dict())


def test_build_from_checkpoint_dir(tmp_path):
    make_checkpoint("qwen3", tmp_path)
    model = build_from_hf(tmp_path)
    config, hf_sd = read_checkpoint(tmp_path)
    model.load_state_dict(hf_to_native(hf_sd, "QWEN3", config))
    assert model.layers[0].attn.q_norm is not None
    assert model.output.weight.shape == (VOCAB, 64)
