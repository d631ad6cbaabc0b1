"""Rollouts for online RL: sample responses from the policy, keep what the policy pass needs.

A :class:`Rollout` is a batch of prompts (left-padded) and sampled responses (right-padded),
with masks, the sampled tokens' log-probs and a truncation flag per row. A
:class:`RolloutEngine` produces rollouts; :class:`LocalRolloutEngine` samples the live policy
with tunesmith's KV-cached :func:`tunesmith.generation.generate` (a vLLM engine can implement
the same protocol later: ``generate`` + ``sync_weights``). :func:`response_logprobs` is the
policy pass: the log-probs of the sampled tokens with gradients, projecting only response
positions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from tunesmith.config._errors import ConfigError
from tunesmith.generation import generate
from tunesmith.modules.masks import padded_attention_inputs
from tunesmith.rlhf._log_probs import token_log_probs

__all__ = [
    "LocalRolloutEngine",
    "Rollout",
    "RolloutEngine",
    "SamplingParams",
    "response_logprobs",
]


@dataclass
class SamplingParams:
    """How responses are sampled.

    ``temperature=0`` is greedy; ``top_k``/``top_p`` filter before sampling (None = off);
    a row stops after emitting one of ``stop_tokens`` (kept in the response).
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    stop_tokens: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")
        self.stop_tokens = tuple(int(t) for t in self.stop_tokens)

    @property
    def logprob_temperature(self) -> float:
        """The temperature the log-probs are taken at: ``temperature``, 1 when greedy."""
        return self.temperature if self.temperature >= 1e-5 else 1.0


@dataclass
class Rollout:
    """A batch of sampled responses.

    Attributes:
        prompt_tokens: ``[b, p]`` long, left-padded with ``pad_id``.
        prompt_mask: ``[b, p]`` bool, True at real prompt tokens.
        response_tokens: ``[b, n]`` long; positions after the first stop token hold ``pad_id``.
        response_mask: ``[b, n]`` bool; True at generated tokens up to and including the
            first stop token.
        logprobs: ``[b, n]`` float32 ``log p(sampled token)`` under ``log_softmax(logits / T)``
            over the full vocabulary (``T`` the temperature, 1 when greedy); 0 where
            ``~response_mask``.
        truncated: ``[b]`` bool, no stop token within ``max_new_tokens``.
        prompt_index: ``[b]`` long index into the input prompt list; a prompt's
            ``num_samples`` rows are contiguous.
        pad_id: the padding id.
    """

    prompt_tokens: Tensor
    prompt_mask: Tensor
    response_tokens: Tensor
    response_mask: Tensor
    logprobs: Tensor
    truncated: Tensor
    prompt_index: Tensor
    pad_id: int

    @property
    def tokens(self) -> Tensor:
        """``[b, p + n]`` prompt then response ids."""
        return torch.cat([self.prompt_tokens, self.response_tokens], dim=1)

    @property
    def mask(self) -> Tensor:
        """``[b, p + n]`` bool, True at real prompt and response tokens."""
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)

    def attention_inputs(self) -> tuple[Tensor, Tensor]:
        """``(mask [b, s, s] bool, input_pos [b, s] long)`` for a forward over ``tokens``.

        Causal attention over real tokens only (a padded query sees only itself, its output
        unused); positions count real tokens, so each row is computed as if alone.
        """
        return padded_attention_inputs(self.mask)

    def response_lengths(self) -> Tensor:
        """``[b]`` long number of response tokens (incl. the stop token)."""
        return self.response_mask.sum(-1)

    def select(self, index: Tensor | Sequence[int]) -> Rollout:
        """The rows ``index`` (``[k]`` long or bool) as a new rollout (micro-batching)."""
        index = torch.as_tensor(index, device=self.prompt_tokens.device)
        values = {f.name: getattr(self, f.name)[index] for f in fields(self) if f.name != "pad_id"}
        return Rollout(pad_id=self.pad_id, **values)

    def __len__(self) -> int:
        return int(self.prompt_tokens.shape[0])

    def to(self, device: torch.device | str) -> Rollout:
        """This rollout with every tensor on ``device``."""
        values = {
            f.name: getattr(self, f.name).to(device) for f in fields(self) if f.name != "pad_id"
        }
        return Rollout(pad_id=self.pad_id, **values)


@runtime_checkable
class RolloutEngine(Protocol):
    """Something that samples responses for prompts: the local policy, later vLLM."""

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        *,
        num_samples: int = 1,
        rng: torch.Generator | None = None,
    ) -> Rollout:
        """Sample ``num_samples`` responses per prompt (token id lists) -> a :class:`Rollout`
        of ``len(prompts) * num_samples`` rows, each prompt's rows contiguous."""
        ...

    def sync_weights(self, model: nn.Module) -> None:
        """Make the engine sample from ``model``'s current weights."""
        ...


def _response_mask(response: Tensor, stop_tokens: Sequence[int]) -> tuple[Tensor, Tensor]:
    """``(mask [b, n] bool, truncated [b] bool)``: True up to and incl. the first stop token."""
    if not stop_tokens:
        b = response.shape[0]
        return torch.ones_like(response, dtype=torch.bool), torch.ones(
            b, dtype=torch.bool, device=response.device
        )
    stop = torch.tensor(list(stop_tokens), dtype=torch.long, device=response.device)
    is_stop = torch.isin(response, stop).long()
    before = is_stop.cumsum(dim=-1) - is_stop  # stop tokens strictly before each position
    return before == 0, is_stop.sum(-1) == 0


def _pad_right(x: Tensor, width: int, value: float | int | bool) -> Tensor:
    if x.shape[1] == width:
        return x
    pad = torch.full((x.shape[0], width - x.shape[1]), value, dtype=x.dtype, device=x.device)
    return torch.cat([x, pad], dim=1)


class LocalRolloutEngine:
    """Samples the live policy with :func:`tunesmith.generation.generate` (KV cache).

    Args:
        model: a ``TransformerDecoder`` (full or LoRA); sampled in ``eval`` mode under
            ``no_grad``, its train/eval mode restored afterwards.
        pad_id: id for left/right padding (may also be a real token: masks come from lengths).
        batch_size: rows generated at once (None = all); chunks are padded to one width.
        use_cache: decode with the KV cache (False recomputes the sequence every step).
        max_seq_len: longest prompt + response allowed (default ``model.max_seq_len``).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        pad_id: int,
        batch_size: int | None = None,
        use_cache: bool = True,
        max_seq_len: int | None = None,
    ) -> None:
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"rollout batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.pad_id = int(pad_id)
        self.batch_size = batch_size
        self.use_cache = use_cache
        self.max_seq_len = max_seq_len or getattr(model, "max_seq_len", None)

    def sync_weights(self, model: nn.Module) -> None:
        """The local engine samples ``model`` itself: nothing to copy."""
        self.model = model

    def _check(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> None:
        if not prompts:
            raise ConfigError("no prompts to generate from")
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise ConfigError(f"prompt {i} is empty: every prompt needs at least one token")
            if self.max_seq_len is not None and len(p) + params.max_new_tokens > self.max_seq_len:
                raise ConfigError(
                    f"prompt {i} has {len(p)} tokens; with max_new_tokens="
                    f"{params.max_new_tokens} that exceeds the model's context of "
                    f"{self.max_seq_len} tokens: shorten or filter the prompts (e.g. the "
                    "dataset's max_seq_len) or lower max_new_tokens"
                )

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        *,
        num_samples: int = 1,
        rng: torch.Generator | None = None,
    ) -> Rollout:
        """See :meth:`RolloutEngine.generate`."""
        self._check(prompts, params)
        if num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {num_samples}")
        device = next(self.model.parameters()).device
        rows = [list(p) for p in prompts for _ in range(num_samples)]
        index = torch.arange(len(prompts), device=device).repeat_interleave(num_samples)
        width = max(len(r) for r in rows)
        prompt_tokens = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        prompt_mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, r in enumerate(rows):
            prompt_tokens[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            prompt_mask[i, width - len(r) :] = True
        prompt_tokens, prompt_mask = prompt_tokens.to(device), prompt_mask.to(device)

        step = self.batch_size or len(rows)
        responses, logprobs = [], []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(rows), step):
                out = generate(
                    self.model,
                    prompt_tokens[start : start + step],
                    params.max_new_tokens,
                    temperature=params.temperature,
                    top_k=params.top_k,
                    top_p=params.top_p,
                    stop_tokens=params.stop_tokens,
                    pad_id=self.pad_id,
                    rng=rng,
                    use_cache=self.use_cache,
                    return_logprobs=True,
                    prompt_mask=prompt_mask[start : start + step],
                )
                assert not isinstance(out, Tensor) and out.logprobs is not None
                responses.append(out.tokens[:, width:])
                logprobs.append(out.logprobs)
        finally:
            self.model.train(was_training)
        n = max(r.shape[1] for r in responses)
        response = torch.cat([_pad_right(r, n, self.pad_id) for r in responses])
        logp = torch.cat([_pad_right(lp, n, 0.0) for lp in logprobs])
        response_mask, truncated = _response_mask(response, params.stop_tokens)
        return Rollout(
            prompt_tokens=prompt_tokens,
            prompt_mask=prompt_mask,
            response_tokens=response.masked_fill(~response_mask, self.pad_id),
            response_mask=response_mask,
            logprobs=logp.masked_fill(~response_mask, 0.0),
            truncated=truncated,
            prompt_index=index,
            pad_id=self.pad_id,
        )


def _projector(model: nn.Module, temperature: float) -> Callable[[Tensor], Tensor]:
    project = getattr(model, "_project", None) or model.output

    def scaled(h: Tensor) -> Tensor:
        logits = project(h)
        return logits if temperature == 1.0 else logits.float() / temperature

    return scaled


def response_logprobs(
    model: nn.Module,
    rollout: Rollout,
    *,
    temperature: float = 1.0,
    return_entropy: bool = False,
    from_hidden: bool | None = None,
    chunk_size: int = 1024,
) -> Tensor | tuple[Tensor, Tensor]:
    """Policy pass: log-probs (with gradients) of the rollout's response tokens.

    Args:
        model: the ``TransformerDecoder`` (full, LoRA, or the reference).
        rollout: what to score.
        temperature: the logits are divided by it (use the sampling temperature; 1 for greedy).
        return_entropy: also return the ``[b, n]`` entropy of each position's distribution.
        from_hidden: run the model with ``skip_output_layer`` and project only response
            positions (default when the model supports it); False projects every position
            in the model's forward (e.g. under FSDP2, where the output layer runs only there).
        chunk_size: response positions projected at once (logits recomputed in backward).

    Returns:
        ``[b, n]`` float32 log-probs under ``log_softmax(logits / temperature)``, 0 where
        ``~response_mask``; with ``return_entropy`` also ``[b, n]`` entropy (0 there too).
        Equals ``rollout.logprobs`` (same weights, fp32) to ~1e-6.
    """
    if temperature <= 0:
        raise ConfigError(f"temperature for log-probs must be > 0, got {temperature}")
    p = rollout.prompt_tokens.shape[1]
    n = rollout.response_tokens.shape[1]
    b = rollout.response_tokens.shape[0]
    mask, input_pos = rollout.attention_inputs()
    # the last response token predicts nothing: the pass runs on s - 1 positions
    tokens, mask, input_pos = rollout.tokens[:, :-1], mask[:, :-1, :-1], input_pos[:, :-1]
    keep = rollout.response_mask  # [b, n]
    targets = rollout.response_tokens[keep]  # [m]
    if from_hidden is None:
        from_hidden = hasattr(model, "skip_output_layer")
    if from_hidden:
        before = model.skip_output_layer
        model.skip_output_layer = True
        try:
            hidden = model(tokens, mask=mask, input_pos=input_pos)  # [b, s - 1, d]
        finally:
            model.skip_output_layer = before
        selected = hidden[:, p - 1 : p - 1 + n][keep]  # [m, d]
        result = token_log_probs(
            selected, targets, _projector(model, temperature), chunk_size, return_entropy
        )
    else:
        out = model(tokens, mask=mask, input_pos=input_pos)
        out = torch.cat(out, dim=1) if isinstance(out, list) else out  # chunked output
        logits = out[:, p - 1 : p - 1 + n][keep]  # [m, vocab]
        result = token_log_probs(
            logits, targets, lambda x: x.float() / temperature, chunk_size, return_entropy
        )
    parts = result if isinstance(result, tuple) else (result,)
    dense = []
    for values in parts:
        full = torch.zeros(b, n, dtype=torch.float32, device=values.device)
        dense.append(full.masked_scatter(keep, values.float()))
    return (dense[0], dense[1]) if return_entropy else dense[0]
