"""Autoregressive decoding for a ``TransformerDecoder``, with or without its KV cache.

Prompts of a batch are left-padded to one length, so the last prompt token of every row sits
in the same column and each step appends one column. Padding never takes part in attention
(it is masked out as a key) and positions count real tokens only, so a padded row generates
exactly what it would generate alone.

:func:`generate` also answers torchtune's call ``generate(model, prompt, *,
max_generated_tokens=...)`` (told apart by that keyword, which tunesmith's form does not
have): it then runs :func:`~tunesmith.generation.torchtune_generate`, torchtune 0.6.1's loop
with its defaults (``temperature=1.0``), its use of an already set-up KV cache, and its
``(tokens, logits)`` result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

import torch
from torch import nn

from tunesmith.generation._sampling import sample_next_token
from tunesmith.generation._steps import torchtune_generate

__all__ = ["GenerationOutput", "generate", "left_pad_prompts", "tunesmith_generate"]


@dataclass
class GenerationOutput:
    """What :func:`generate` returns when ``return_logits`` or ``return_logprobs`` is set.

    ``tokens``: ``[b, s + n]`` prompt and generated ids (after a stop token: ``pad_id``).
    ``logits``: ``[b, n, vocab]`` float32 scores each generated token was sampled from
    (None unless ``return_logits``).
    ``logprobs``: ``[b, n]`` float32 ``log_softmax(logits / T)`` of each sampled token over the
    full vocabulary (``T`` the temperature, 1 when greedy); 0 after a row finished (None
    unless ``return_logprobs``).
    """

    tokens: torch.Tensor
    logits: torch.Tensor | None = None
    logprobs: torch.Tensor | None = None


def left_pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    """Stack token lists into one ``[b, max_len]`` long tensor, padding on the left."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    out = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    for row, p in enumerate(prompts):
        out[row, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
    return out


def _logits_of(output: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """The decoder returns a list of chunks when ``set_num_output_chunks`` was used."""
    return torch.cat(output, dim=1) if isinstance(output, list) else output


def _attention_mask(key_valid: torch.Tensor, q_start: int, q_end: int) -> torch.Tensor:
    """``[b, q_end - q_start, k]`` bool mask: query i sees valid keys j <= i.

    ``key_valid`` is ``[b, k]`` (False at padding). A padded query row that would see no key
    at all is allowed to see itself so attention never normalises over an empty set; its
    output is never used.
    """
    b, k = key_valid.shape
    q = torch.arange(q_start, q_end, device=key_valid.device)
    causal = q[:, None] >= torch.arange(k, device=key_valid.device)[None, :]
    mask = causal[None] & key_valid[:, None, :]
    diag = q[:, None] == torch.arange(k, device=key_valid.device)[None, :]
    return mask | (diag[None] & ~mask.any(dim=-1, keepdim=True))


@overload
def generate(
    model: nn.Module,
    prompt_tokens: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: Sequence[int] | None = None,
    pad_id: int = 0,
    rng: torch.Generator | None = None,
    use_cache: bool = True,
    on_token: Callable[[torch.Tensor], None] | None = None,
    return_logits: bool = False,
    return_logprobs: bool = False,
    prompt_mask: torch.Tensor | None = None,
    encoder_input: Mapping[str, torch.Tensor] | None = None,
    encoder_mask: torch.Tensor | None = None,
) -> torch.Tensor | GenerationOutput: ...


@overload
def generate(
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
) -> tuple[torch.Tensor, torch.Tensor]: ...


def generate(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """Decode after a prompt: tunesmith's form (:func:`tunesmith_generate`, the first overload) or,
    when ``max_generated_tokens`` is passed, torchtune's (:func:`torchtune_generate`)."""
    if "max_generated_tokens" in kwargs:
        return torchtune_generate(model, *args, **kwargs)
    return tunesmith_generate(model, *args, **kwargs)


@torch.no_grad()
def tunesmith_generate(
    model: nn.Module,
    prompt_tokens: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: Sequence[int] | None = None,
    pad_id: int = 0,
    rng: torch.Generator | None = None,
    use_cache: bool = True,
    on_token: Callable[[torch.Tensor], None] | None = None,
    return_logits: bool = False,
    return_logprobs: bool = False,
    prompt_mask: torch.Tensor | None = None,
    encoder_input: Mapping[str, torch.Tensor] | None = None,
    encoder_mask: torch.Tensor | None = None,
) -> torch.Tensor | GenerationOutput:
    """Generate up to ``max_new_tokens`` tokens after each (left-padded) prompt.

    Args:
        model: a ``TransformerDecoder`` (``forward(tokens, mask=, input_pos=)``).
        prompt_tokens: ``[b, s]`` long, left-padded with ``pad_id`` (see :func:`left_pad_prompts`).
        max_new_tokens: how many tokens to add at most.
        temperature, top_k, top_p, rng: sampling (see :func:`sample_next_token`);
            ``temperature=0`` is greedy.
        stop_tokens: a row is finished once it emits one of these (the stop token is kept;
            later positions hold ``pad_id``). Generation ends when every row is finished.
        pad_id: id used for left padding and for positions after a row finished.
        use_cache: decode incrementally with the model's KV cache (set up here for this
            batch and sequence length); False re-runs the whole sequence every step.
        on_token: called after every step with the ``[b]`` new tokens (streaming).
        return_logits: also return the ``[b, n, vocab]`` logits each token came from.
        return_logprobs: also return the ``[b, n]`` log-probs of the sampled tokens (without
            keeping ``[b, n, vocab]`` logits).
        prompt_mask: ``[b, s]`` bool, True at real prompt tokens; default ``prompt_tokens !=
            pad_id`` (pass it when ``pad_id`` is also a real token of the prompts).
        encoder_input, encoder_mask: a fusion model's image inputs (``DeepFusionModel``) and
            the prompt's ``[b, s, E]`` cross-attention mask; new tokens see what the last
            prompt token sees. With the KV cache the encoder runs once, on the prompt.

    Returns:
        ``[b, s + n]`` tokens (``n <= max_new_tokens``), or a :class:`GenerationOutput`.
    """
    if prompt_tokens.dim() != 2:
        raise ValueError(
            f"prompt_tokens must be [batch, seq], got shape {tuple(prompt_tokens.shape)}"
        )
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    device = prompt_tokens.device
    b, s = prompt_tokens.shape
    total = s + max_new_tokens
    key_valid = torch.zeros(b, total, dtype=torch.bool, device=device)
    if prompt_mask is not None and prompt_mask.shape != prompt_tokens.shape:
        raise ValueError(
            f"prompt_mask {tuple(prompt_mask.shape)} must match prompt_tokens "
            f"{tuple(prompt_tokens.shape)}"
        )
    key_valid[:, :s] = prompt_tokens != pad_id if prompt_mask is None else prompt_mask.bool()
    # the first real token of each row sits at position 0
    positions = (key_valid.long().cumsum(dim=-1) - 1).clamp(min=0)
    stop = torch.tensor(list(stop_tokens or []), dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    tokens = prompt_tokens
    step_logits: list[torch.Tensor] = []
    step_logprobs: list[torch.Tensor] = []
    logprob_temperature = temperature if temperature is not None and temperature >= 1e-5 else 1.0

    if use_cache:
        dtype = next(model.parameters()).dtype
        model.setup_caches(batch_size=b, dtype=dtype, max_seq_len=total)
        model.reset_caches()
    try:
        cur = s
        for step in range(max_new_tokens):
            fusion: dict[str, Any] = {}
            if use_cache:
                start = 0 if step == 0 else cur - 1
                if encoder_input is not None and step == 0:  # cached by the fusion layers
                    fusion = {"encoder_input": encoder_input, "encoder_mask": encoder_mask}
                out = model(
                    tokens[:, start:cur],
                    mask=_attention_mask(key_valid[:, :cur], start, cur),
                    input_pos=positions[:, start:cur],
                    **fusion,
                )
            else:
                if encoder_input is not None:
                    fusion = {"encoder_input": encoder_input}
                    fusion["encoder_mask"] = _extend_rows(encoder_mask, cur)
                out = model(
                    tokens,
                    mask=_attention_mask(key_valid[:, :cur], 0, cur),
                    input_pos=positions[:, :cur],
                    **fusion,
                )
            logits = _logits_of(out)[:, -1].float()
            next_token = sample_next_token(
                logits, temperature=temperature, top_k=top_k, top_p=top_p, rng=rng
            )
            next_token = torch.where(done, torch.full_like(next_token, pad_id), next_token)
            if return_logits:
                step_logits.append(logits)
            if return_logprobs:
                logp = torch.log_softmax(logits / logprob_temperature, dim=-1)
                picked = logp.gather(-1, next_token[:, None]).squeeze(-1)
                step_logprobs.append(picked.masked_fill(done, 0.0))
            key_valid[:, cur] = ~done
            positions[:, cur] = positions[:, cur - 1] + 1
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            cur += 1
            if on_token is not None:
                on_token(next_token)
            if stop.numel():
                done |= torch.isin(next_token, stop)
                if bool(done.all()):
                    break
    finally:
        if use_cache:
            _teardown_caches(model)
    if return_logits or return_logprobs:
        out_logits = None
        if return_logits:
            out_logits = (
                torch.stack(step_logits, dim=1)
                if step_logits
                else torch.empty(b, 0, 0, device=device, dtype=torch.float32)
            )
        out_logprobs = None
        if return_logprobs:
            out_logprobs = (
                torch.stack(step_logprobs, dim=1)
                if step_logprobs
                else torch.empty(b, 0, device=device, dtype=torch.float32)
            )
        return GenerationOutput(tokens=tokens, logits=out_logits, logprobs=out_logprobs)
    return tokens


def _extend_rows(mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """``[b, s, E]`` -> ``[b, length, E]``: rows past ``s`` repeat the last one."""
    if mask is None or mask.shape[1] >= length:
        return mask
    extra = mask[:, -1:].expand(-1, length - mask.shape[1], -1)
    return torch.cat([mask, extra], dim=1)


def _teardown_caches(model: nn.Module) -> None:
    """Leave the model as it was: training forwards must not see a KV cache."""
    for name in ("remove_caches", "teardown_caches"):
        teardown = getattr(model, name, None)
        if callable(teardown):
            teardown()
            return
