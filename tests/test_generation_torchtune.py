"""torchtune's ``generate`` form: tunesmith's loop equals torchtune 0.6.1's own, token for token.

The reference is torchtune 0.6.1's ``torchtune/generation/_generation.py``, read unchanged
from its PyPI wheel (``tests/_torchtune_wheel.py``) and executed as a standalone module (its
one torchtune import, ``TransformerDecoder``, is only a type annotation and is given a
placeholder). Both loops drive the same tunesmith decoder with the same seeds, so tokens and
logits must be identical: left padding, stop tokens, ``rng``, the KV cache (set up by the
caller, as torchtune expects) and ``custom_generate_next_token`` are each covered.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from tests._torchtune_wheel import torchtune_061_source
from tunesmith.generation import (
    GenerationOutput,
    generate,
    generate_next_token,
    get_causal_mask_from_padding_mask,
    get_position_ids_from_padding_mask,
    torchtune_generate,
)
from tunesmith.models import build_decoder
from tunesmith.models.spec import ModelSpec

VOCAB = 64


@pytest.fixture(scope="module")
def reference() -> Iterator[types.ModuleType]:
    """torchtune 0.6.1's generation module, run from the wheel's source."""
    source = torchtune_061_source("torchtune/generation/_generation.py")
    placeholder = types.ModuleType("torchtune.modules.transformer")
    placeholder.TransformerDecoder = torch.nn.Module  # type: ignore[attr-defined]
    saved = {n: sys.modules.get(n) for n in ("torchtune.modules.transformer",)}
    sys.modules["torchtune.modules.transformer"] = placeholder
    try:
        module = types.ModuleType("torchtune_061_generation")
        exec(compile(source, "torchtune/generation/_generation.py", "exec"), module.__dict__)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    yield module


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    spec = ModelSpec(family="LLAMA3", vocab_size=VOCAB, num_layers=2, num_heads=4,
                     num_kv_heads=2, embed_dim=32, intermediate_dim=64, max_seq_len=64)  # fmt: skip
    return build_decoder(spec).eval()


PROMPTS = {
    "1d": torch.tensor([5, 9, 17, 3, 22]),
    "batch": torch.tensor([[5, 9, 17, 3], [7, 7, 30, 2], [11, 40, 8, 6]]),
    "left_padded": torch.tensor([[0, 0, 17, 3], [7, 7, 30, 2], [0, 40, 8, 6]]),
}


def _both(
    reference: types.ModuleType,
    model: torch.nn.Module,
    cached: bool,
    rng_seed: int | None = None,
    **kw: Any,
):
    """Run torchtune's generate then tunesmith's from the same global seed, cache state and
    (with ``rng_seed``) a fresh ``rng`` each."""
    outs = []
    for fn in (reference.generate, generate):
        if rng_seed is not None:
            kw["rng"] = torch.Generator().manual_seed(rng_seed)
        if cached:
            b = kw["prompt"].shape[0] if kw["prompt"].dim() == 2 else 1
            model.setup_caches(batch_size=b, dtype=torch.float32, decoder_max_seq_len=40)
        torch.manual_seed(1234)
        try:
            outs.append(fn(model=model, **kw))
        finally:
            if cached:
                model.remove_caches()
    return outs


@pytest.mark.parametrize("cached", [False, True], ids=["recompute", "kv_cache"])
@pytest.mark.parametrize("prompt", list(PROMPTS))
def test_equals_torchtune(reference, model, prompt: str, cached: bool) -> None:
    (ref_tokens, ref_logits), (tokens, logits) = _both(
        reference, model, cached, prompt=PROMPTS[prompt], max_generated_tokens=7,
        temperature=0.7, top_k=20,
    )  # fmt: skip
    assert torch.equal(tokens, ref_tokens)
    assert tokens.shape == (ref_tokens.shape[0], PROMPTS[prompt].shape[-1] + 7)
    assert logits.shape == (tokens.shape[0], 7, VOCAB)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=0)


@pytest.mark.parametrize("cached", [False, True], ids=["recompute", "kv_cache"])
def test_stop_tokens_and_rng_equal_torchtune(reference, model, cached: bool) -> None:
    prompt = PROMPTS["left_padded"]
    free, _ = generate(model, prompt, max_generated_tokens=6, rng=torch.Generator().manual_seed(3))
    # stop row 0 on its 2nd token and row 1 on its 4th: uneven stopping, then all rows stop
    stops = [int(free[0, 5]), int(free[1, 7])]
    runs = _both(
        reference, model, cached, prompt=prompt, max_generated_tokens=6,
        stop_tokens=stops, rng_seed=3,
    )  # fmt: skip
    (ref_tokens, ref_logits), (tokens, logits) = runs
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=0)
    row0 = tokens[0, 4:].tolist()
    first = row0.index(stops[0])
    assert all(t == 0 for t in row0[first + 1 :])  # zeroed after the stop token
    assert bool((logits[0, first + 1 :] == 0).all())


def test_custom_next_token_is_called_after_the_first(reference, model) -> None:
    calls: list[tuple[int, ...]] = []

    def counting(model, *, input_pos, x, mask, temperature, top_k, q):
        calls.append(tuple(x.shape))
        return generate_next_token(model, input_pos, x, q, mask=mask,
                                   temperature=temperature, top_k=top_k)  # fmt: skip

    for fn in (reference.generate, generate):
        torch.manual_seed(5)
        fn(model, PROMPTS["batch"], max_generated_tokens=4, custom_generate_next_token=counting)
    # without a cache every step re-runs the whole sequence: x grows by one each call
    assert calls == [(3, 5), (3, 6), (3, 7)] * 2


def test_masks_and_positions_equal_torchtune(reference) -> None:
    padding = torch.tensor([[False, False, True, True, True], [True] * 5, [False] * 4 + [True]])
    for target in (None, 5, 9):
        ours = get_causal_mask_from_padding_mask(padding, target_seq_len=target)
        assert torch.equal(ours, reference.get_causal_mask_from_padding_mask(padding, target))
    assert torch.equal(
        get_position_ids_from_padding_mask(padding),
        reference.get_position_ids_from_padding_mask(padding),
    )


def test_tunesmith_form_is_unchanged(model) -> None:
    """Without ``max_generated_tokens`` the call is tunesmith's: greedy by default, caches set
    up and removed by the call, the tokens (or a GenerationOutput) returned."""
    prompt = PROMPTS["batch"]
    tokens = generate(model, prompt, 5)
    assert isinstance(tokens, torch.Tensor) and tokens.shape == (3, 9)
    assert not model.caches_are_enabled()
    out = torchtune_generate(model, prompt, max_generated_tokens=5, temperature=1e-6)
    assert torch.equal(out[0], tokens)  # torchtune's loop at ~0 temperature is greedy too
    full = generate(model, prompt, 5, return_logits=True)
    assert isinstance(full, GenerationOutput)
    torch.testing.assert_close(full.logits, out[1], rtol=1e-5, atol=1e-5)
