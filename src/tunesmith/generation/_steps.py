"""torchtune's ``torchtune.generation`` decoding loop, one step and its masks, by its names.

:func:`torchtune_generate` is torchtune 0.6.1's tensor-in, ``(tokens, logits)``-out
``generate``; :func:`~tunesmith.generation.generate` dispatches to it when called with
torchtune's keyword ``max_generated_tokens``. The other functions are the pieces torchtune
exposes for code that writes its own decoding loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = [
    "generate_next_token",
    "get_causal_mask_from_padding_mask",
    "get_position_ids_from_padding_mask",
    "multinomial_sample_one",
    "sample",
    "torchtune_generate",
    "update_stop_tokens_tracker",
]


def multinomial_sample_one(probs: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Draw one index per row of ``probs`` ``[..., v]`` given exponential noise ``q`` (same
    shape): ``argmax(probs / q)`` is a sample from ``probs``. Returns ``[..., 1]`` int."""
    return torch.argmax(probs / q, dim=-1, keepdim=True).to(dtype=torch.int)


def sample(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    q: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample from ``logits`` ``[..., v]`` with temperature and top-k; ``q`` is the
    exponential noise (drawn when None). Returns ``[..., 1]`` token ids."""
    logits = logits / max(temperature, 1e-5)
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[..., -1:]
        logits = torch.where(logits < kth, torch.full_like(logits, -float("inf")), logits)
    probs = torch.softmax(logits, dim=-1)
    if q is None:
        q = torch.empty_like(probs).exponential_(1)
    return multinomial_sample_one(probs, q)


def generate_next_token(
    model: nn.Module,
    input_pos: torch.Tensor,
    x: torch.Tensor,
    q: torch.Tensor | None = None,
    *,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` on ``x`` ``[b, s]`` (positions ``input_pos``, attention ``mask``) and
    sample from the last position (``q``: ``[b, v]`` exponential noise, see :func:`sample`).

    Returns ``(tokens [b, 1] int32, logits [b, 1, v])``: the last position's logits.
    """
    out = model(x, input_pos=input_pos, mask=mask)
    last = out[-1][:, -1] if isinstance(out, list) else out[:, -1]  # chunked output: last chunk
    return sample(last.clone(), temperature=temperature, top_k=top_k, q=q), last.unsqueeze(1)


def update_stop_tokens_tracker(
    tokens: torch.Tensor, stop_tokens: torch.Tensor, stop_token_reached: torch.Tensor
) -> torch.Tensor:
    """``stop_token_reached`` ``[b]`` or-ed with whether ``tokens`` ``[b, 1]`` is a stop token."""
    return stop_token_reached | torch.isin(tokens, stop_tokens).flatten()


def get_causal_mask_from_padding_mask(
    padding_mask: torch.Tensor, target_seq_len: int | None = None
) -> torch.Tensor:
    """A ``[b, s, target_seq_len]`` bool attention mask from a ``[b, s]`` padding mask
    (True = real token): causal, padded keys masked, and each position sees itself.

    Raises:
        ValueError: when ``target_seq_len`` is shorter than ``s``.
    """
    bsz, seq_len = padding_mask.shape
    target = seq_len if target_seq_len is None else target_seq_len
    if target < seq_len:
        raise ValueError(f"target_seq_len ({target}) must be >= the sequence length ({seq_len})")
    causal = torch.tril(torch.ones(seq_len, target, dtype=torch.bool, device=padding_mask.device))
    mask = causal.expand(bsz, seq_len, target).clone()
    mask[:, :, :seq_len] &= padding_mask.bool()[:, None, :]
    mask.diagonal(dim1=1, dim2=2).fill_(True)
    return mask


def get_position_ids_from_padding_mask(padding_mask: torch.Tensor) -> torch.Tensor:
    """Positions ``[b, s]`` counting real tokens from 0 (left padding gets position 0)."""
    return ((padding_mask.cumsum(-1) - 1) * padding_mask).to(torch.int)


def _noise(model: nn.Module, b: int, rng: torch.Generator | None, device: torch.device):
    """``[b, vocab]`` exponential noise drawn from ``rng``; None (draw globally) without one."""
    if rng is None:
        return None
    vocab = model.tok_embeddings.num_embeddings
    return torch.empty(b, vocab, device=device).exponential_(1, generator=rng)


@torch.no_grad()
def torchtune_generate(
    model: nn.Module,
    prompt: torch.Tensor,
    *,
    max_generated_tokens: int,
    pad_id: int = 0,
    temperature: float = 1.0,
    top_k: int | None = None,
    stop_tokens: Sequence[int] | None = None,
    rng: torch.Generator | None = None,
    custom_generate_next_token: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """torchtune 0.6.1's ``generate``: sample ``max_generated_tokens`` after ``prompt``.

    Args:
        model: a decoder (``forward(x, input_pos=, mask=)``, ``caches_are_enabled()``,
            ``tok_embeddings``). When its caches are enabled the loop decodes incrementally
            into them from the cache's current position (the caller sets them up and resets
            them, as with torchtune), with ``[b, s, decoder_max_cache_seq_len]`` masks;
            otherwise every step re-runs the whole sequence.
        prompt: ``[s]`` or ``[b, s]`` ids, left-padded with ``pad_id``: padding is masked out
            as a key and positions count real tokens only.
        max_generated_tokens: tokens to generate (fewer when every row hit a stop token).
        pad_id: the padding id of ``prompt``.
        temperature, top_k: see :func:`sample` (there is no greedy mode: ``temperature`` is
            clamped at 1e-5).
        stop_tokens: a row is finished after one of these; its later tokens and logits are
            set to 0 (not ``pad_id``: torchtune multiplies by a 0/1 mask).
        rng: generator for the sampling noise (else the global RNG draws it).
        custom_generate_next_token: replaces :func:`generate_next_token` from the second
            token on (e.g. a compiled one), called with the same keywords.

    Returns:
        ``(tokens [b, s + n], logits [b, n, v])``, ``n <= max_generated_tokens``.
    """
    prompt = prompt.view(1, -1) if prompt.dim() == 1 else prompt
    step = custom_generate_next_token or generate_next_token
    b, s = prompt.shape
    total = s + max_generated_tokens
    device = prompt.device
    incremental = model.caches_are_enabled()
    width = model.decoder_max_cache_seq_len if incremental else total
    valid = prompt != pad_id
    if not bool(valid.all()):
        valid = nn.functional.pad(valid, (0, max_generated_tokens), value=True)
        masks = get_causal_mask_from_padding_mask(valid, target_seq_len=width)
        positions = get_position_ids_from_padding_mask(valid)
    else:
        masks = torch.ones(total, width, dtype=torch.bool, device=device).tril()[None]
        positions = torch.arange(total, device=device)[None]
    first_mask = masks[:, :s] if incremental else masks[:, :s, :s]
    tokens, logits = generate_next_token(
        model,
        input_pos=positions[:, :s],
        x=prompt,
        q=_noise(model, b, rng, device),
        mask=first_mask,
        temperature=temperature,
        top_k=top_k,
    )
    out_tokens = torch.cat([prompt, tokens], dim=-1)
    out_logits = [logits]
    stop = None if not stop_tokens else torch.tensor(list(stop_tokens), device=device)
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    keep = [torch.ones(b, s + 1, dtype=torch.int32, device=device)]  # 0 after a stop token
    if stop is not None:
        finished = update_stop_tokens_tracker(tokens, stop.to(tokens.dtype), finished)
        if bool(finished.all()):
            return out_tokens, logits
    cur = s
    for _ in range(max_generated_tokens - 1):
        if stop is not None:
            keep.append((~finished).to(torch.int32)[:, None])
        if incremental:
            pos, mask, x = positions[:, cur].contiguous(), masks[:, cur, None].contiguous(), tokens
        else:
            pos, mask, x = positions[:, : cur + 1], masks[:, : cur + 1, : cur + 1], out_tokens
        tokens, logits = step(
            model,
            input_pos=pos,
            x=x.clone(),
            mask=mask,
            temperature=temperature,
            top_k=top_k,
            q=_noise(model, b, rng, device),
        )
        out_tokens = torch.cat([out_tokens, tokens], dim=-1)
        out_logits.append(logits)
        cur += 1
        if stop is not None:
            finished = update_stop_tokens_tracker(tokens, stop.to(tokens.dtype), finished)
            if bool(finished.all()):
                break
    all_logits = torch.cat(out_logits, dim=1)
    if stop is not None:
        kept = torch.cat(keep, dim=1)
        out_tokens = out_tokens * kept
        all_logits = all_logits * kept[:, -all_logits.shape[1] :, None]
    return out_tokens, all_logits
