"""An EleutherAI lm-eval ``LM`` over a tunesmith ``TransformerDecoder`` and tokenizer.

Scoring follows lm-eval's own Hugging Face backend (``model="hf"``) step for step, so the
same weights give the same numbers: lm-eval's ``TemplateLM`` encodes context/continuation
pairs (trailing context spaces move to the continuation; an empty context is the prefix
token: BOS, else EOS), ``tok_encode`` adds BOS by default like a Hugging Face tokenizer
with ``add_special_tokens=True``, inputs are ``(context + continuation)[-(max_length + 1):-1]``
and a continuation's score is the sum of its tokens' log-softmax values (float32) and whether
each was the argmax. ``loglikelihood_rolling`` uses lm-eval's rolling windows.
``generate_until`` decodes greedily (or samples when asked) with
:func:`tunesmith.generation.generate` and the KV cache, cutting at the ``until`` strings.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.generation import generate, left_pad_prompts
from tunesmith.utils import get_logger, require

require("lm_eval", "eval")

from lm_eval.api.model import TemplateLM  # noqa: E402
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402

__all__ = ["TunesmithLM"]

log = get_logger(__name__)


def _logits_of(out: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(out, dim=1) if isinstance(out, list) else out


class TunesmithLM(TemplateLM):
    """lm-eval model backed by a tunesmith decoder.

    Args:
        model: a ``TransformerDecoder`` (``forward(tokens [b, s]) -> logits [b, s, vocab]``).
        tokenizer: a tunesmith tokenizer (``encode(text, add_bos, add_eos)``, ``decode``,
            ``bos_id``, ``eos_id``, optional ``stop_tokens``).
        device: where the model lives.
        max_seq_length: longest input scored at once (default: the model's ``max_seq_len``).
        batch_size: sequences per forward.
        add_bos_token: prepend BOS when encoding (lm-eval's flag; None = yes when the
            tokenizer has a BOS token, as Hugging Face tokenizers do by default).
        max_gen_toks: default generation budget when a task does not set one.
        enable_kv_cache: decode with the KV cache in ``generate_until``.
    """

    backend = "causal"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        device: torch.device | str = "cpu",
        max_seq_length: int | None = None,
        batch_size: int = 8,
        add_bos_token: bool | None = None,
        max_gen_toks: int = 256,
        enable_kv_cache: bool = True,
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self._tokenizer = tokenizer
        self._device = torch.device(device)
        self._max_length = int(max_seq_length or getattr(model, "max_seq_len", 2048))
        self._batch_size = int(batch_size)
        if self._batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.add_bos_token = add_bos_token
        self.max_gen_toks = int(max_gen_toks)
        self.enable_kv_cache = enable_kv_cache

    # ------------------------------------------------------------------ lm-eval interface
    @property
    def eot_token_id(self) -> int:
        return int(self._tokenizer.eos_id)

    @property
    def prefix_token_id(self) -> int:
        bos = getattr(self._tokenizer, "bos_id", None)
        return int(bos) if bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self) -> torch.device:
        return self._device

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, **kwargs: Any
    ) -> list[int]:
        """Ids of ``string``; BOS first unless ``add_special_tokens`` / ``add_bos_token`` is
        False or the text already starts with the BOS string."""
        add = add_special_tokens
        if add is None:
            add = self.add_bos_token if self.add_bos_token is not None else True
            bos = getattr(self._tokenizer, "bos_id", None)
            if add and bos is not None:
                bos_text = self._tokenizer.decode([bos], skip_special_tokens=False)
                if bos_text and string.startswith(bos_text):
                    add = False
        ids = list(self._tokenizer.encode(string, add_bos=bool(add), add_eos=False))
        left = kwargs.get("left_truncate_len")
        return ids[-left:] if left else ids

    @property
    def tokenizer_name(self) -> str:
        """Identifies the tokenizer in lm-eval's request cache keys."""
        path = getattr(self._tokenizer, "path", None) or ""
        return f"{type(self._tokenizer).__name__}:{path}".replace("/", "__")

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """The prompt text of ``chat_history`` in the tokenizer's chat format (lm-eval's
        ``apply_chat_template=True``): a Jinja-template tokenizer renders it; a tokenizer
        with a built-in chat format tokenizes the messages and the ids are decoded."""
        from tunesmith.data import Message

        messages = [Message(role=m["role"], content=m["content"]) for m in chat_history]
        render = getattr(self._tokenizer, "render", None)
        if callable(render):
            return render(messages, add_generation_prompt=add_generation_prompt)
        if add_generation_prompt:
            messages.append(Message(role="assistant", content=""))
        tokens, _ = self._tokenizer.tokenize_messages(messages, add_end_tokens=False)
        return self.tok_decode(tokens, skip_special_tokens=False)

    def tok_decode(self, tokens: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tokenizer.decode(list(tokens), skip_special_tokens=skip_special_tokens)

    @torch.no_grad()
    def _loglikelihood_tokens(
        self,
        requests: list[tuple[Any, list[int], list[int]]],
        disable_tqdm: bool = False,
        **kwargs: Any,
    ) -> list[tuple[float, bool]]:
        """``[(key, context ids, continuation ids)] -> [(sum log p(continuation), greedy?)]``.

        Longest inputs first, right-padded batches (causal attention never lets a real token
        see the padding after it).
        """
        inputs = []
        for _, context, continuation in requests:
            if not continuation:
                raise ValueError("lm-eval asked to score an empty continuation")
            whole = (list(context) + list(continuation))[-(self.max_length + 1) :]
            inputs.append((whole[:-1], list(continuation)))
        order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i][0]))
        results: list[tuple[float, bool] | None] = [None] * len(inputs)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            width = max(len(inputs[i][0]) for i in chunk)
            batch = torch.full((len(chunk), width), self.eot_token_id, dtype=torch.long)
            for row, i in enumerate(chunk):
                tokens = inputs[i][0]
                batch[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            logits = _logits_of(self.model(batch.to(self.device)))
            for row, i in enumerate(chunk):
                tokens, continuation = inputs[i]
                n = len(continuation)
                # only the continuation's positions: [n, vocab] float32 log-probabilities
                scores = F.log_softmax(logits[row, len(tokens) - n : len(tokens)].float(), dim=-1)
                target = torch.tensor(continuation, device=scores.device)
                greedy = bool((scores.argmax(dim=-1) == target).all())
                total = float(scores.gather(-1, target[:, None]).sum())
                results[i] = (total, greedy)
        return [r for r in results if r is not None]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts, scored in disjoint windows of ``max_length``."""
        windows: list[tuple[int, tuple[Any, list[int], list[int]]]] = []
        for index, (string,) in enumerate(req.args for req in requests):
            for context, continuation in map(
                make_disjoint_window,
                get_rolling_token_windows(
                    token_list=self.tok_encode(string),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                ),
            ):
                windows.append((index, (None, context, continuation)))
        scores = self._loglikelihood_tokens([w for _, w in windows])
        totals = [0.0] * len(requests)
        for (index, _), (score, _) in zip(windows, scores, strict=True):
            totals[index] += score
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Continue each context until one of its ``until`` strings or ``max_gen_toks``.

        Requests with the same generation arguments are decoded together in left-padded
        batches of ``batch_size`` (padding never changes a row's tokens).
        """
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            key = json.dumps(req.args[1] or {}, sort_keys=True, default=str)
            groups.setdefault(key, []).append(i)
        out: list[str] = [""] * len(requests)
        for indices in groups.values():
            gen_kwargs = dict(requests[indices[0]].args[1] or {})
            indices.sort(key=lambda i: -len(requests[i].args[0]))
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                texts = self._generate_batch([requests[i].args[0] for i in chunk], gen_kwargs)
                for i, text in zip(chunk, texts, strict=True):
                    out[i] = text
        for req, text in zip(requests, out, strict=True):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return out

    def _generation_settings(self, gen_kwargs: dict[str, Any]) -> dict[str, Any]:
        """lm-eval's generation arguments -> ``until`` strings (with the EOS text),
        ``max_new``, ``temperature`` (0 unless ``do_sample``), ``top_k``, ``top_p``."""
        gen_kwargs = dict(gen_kwargs)
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        eos_text = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        if eos_text and eos_text not in until:
            until.append(eos_text)
        max_new = int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks))
        do_sample = bool(gen_kwargs.pop("do_sample", False))
        temperature = float(gen_kwargs.pop("temperature", 0.0) or 0.0)
        temperature = temperature if do_sample else 0.0
        top_k, top_p = gen_kwargs.pop("top_k", None), gen_kwargs.pop("top_p", None)
        if gen_kwargs:
            log.debug("generate_until ignores generation arguments %s", sorted(gen_kwargs))
        return {"until": until, "max_new": max_new, "temperature": temperature,
                "top_k": top_k, "top_p": top_p}  # fmt: skip

    def _stop_tokens(self) -> list[int]:
        return list(getattr(self._tokenizer, "stop_tokens", None) or [self.eot_token_id])

    def _texts(self, new_tokens: torch.Tensor, until: Sequence[str]) -> list[str]:
        """``[b, n]`` generated ids -> texts, cut at the first stop token and ``until`` string."""
        stop = self._stop_tokens()
        texts = []
        for row in new_tokens.tolist():
            ids = []
            for t in row:
                if t in stop:
                    break
                ids.append(t)
            text = self.tok_decode(ids, skip_special_tokens=False)
            for s in until:
                if s:
                    text = text.split(s)[0]
            texts.append(text)
        return texts

    def _generate_batch(self, contexts: list[str], gen_kwargs: dict[str, Any]) -> list[str]:
        opts = self._generation_settings(gen_kwargs)
        max_new = opts["max_new"]
        keep = max(1, self.max_length - max_new)
        prompts = [self.tok_encode(c, left_truncate_len=keep) for c in contexts]
        batch = left_pad_prompts(prompts, pad_id=self.eot_token_id)
        tokens = generate(
            self.model,
            batch.to(self.device),
            max_new,
            temperature=opts["temperature"],
            top_k=opts["top_k"],
            top_p=opts["top_p"],
            stop_tokens=self._stop_tokens(),
            pad_id=self.eot_token_id,
            use_cache=self.enable_kv_cache,
        )
        return self._texts(tokens[:, batch.shape[1] :], opts["until"])
