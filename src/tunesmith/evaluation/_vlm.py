"""lm-eval's multimodal path (``MULTIMODAL = True``, like ``hf-multimodal``) over a tunesmith
fusion model (``DeepFusionModel``, Llama 3.2 Vision) and its model transform.

lm-eval hands a multimodal ``generate_until`` request as ``(context, gen_kwargs, {"visual":
[PIL images]})`` with one ``<image>`` placeholder per image in the context (MMMU's
convention). Each context becomes one user message whose content interleaves the text and
the images at the placeholders (all images first when there are none), formatted by the
transform's chat format with the assistant header open (as torchtune's ``_VLMEvalWrapper``
did), then decoded greedily (or sampled when asked) with :func:`tunesmith.generation.generate`,
the fusion layers' caches holding the image keys. Requests without images, and
loglikelihood requests, take the text path of :class:`TunesmithLM`.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from tunesmith.evaluation._lm import TunesmithLM
from tunesmith.generation import generate

__all__ = ["TunesmithVLM", "image_text_messages"]

DEFAULT_IMAGE_TAG = "<image>"


def image_text_messages(text: str, images: list[Any], image_tag: str = DEFAULT_IMAGE_TAG) -> list:
    """``[user message, empty assistant message]`` with the images at the ``image_tag``
    placeholders of ``text`` (all first when it has none)."""
    from tunesmith.data import Message

    pieces = text.split(image_tag)
    if len(pieces) == 1:
        content = [{"type": "image", "content": im} for im in images]
        content.append({"type": "text", "content": text})
    elif len(pieces) - 1 != len(images):
        raise ValueError(
            f"the prompt has {len(pieces) - 1} {image_tag} placeholders but the request has "
            f"{len(images)} images: {text[:120]!r}"
        )
    else:
        content = []
        for i, piece in enumerate(pieces):
            if piece:
                content.append({"type": "text", "content": piece})
            if i < len(images):
                content.append({"type": "image", "content": images[i]})
    return [Message(role="user", content=content), Message(role="assistant", content="")]


def _left_pad(batch: dict[str, Any], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """A right-padded collated batch -> left-padded ``tokens [b, s]``, its ``valid [b, s]``
    mask and ``encoder_mask [b, s, E]`` (each row's entries moved with its tokens)."""
    tokens, labels = batch["tokens"], batch["labels"]
    lengths = [int(n) for n in (labels != -100).sum(dim=1)] if labels is not None else None
    b, s = tokens.shape
    if lengths is None:
        lengths = [s] * b
    out = torch.full_like(tokens, pad_id)
    valid = torch.zeros(b, s, dtype=torch.bool)
    mask = batch.get("encoder_mask")
    out_mask = None if mask is None else torch.zeros_like(mask)
    for row, n in enumerate(lengths):
        out[row, s - n :] = tokens[row, :n]
        valid[row, s - n :] = True
        if mask is not None:
            out_mask[row, s - n :] = mask[row, :n]
    return out, valid, out_mask


def _text_request(request: Any) -> Any:
    """The request with an empty multimodal argument dropped (lm-eval adds ``{}``)."""
    if len(request.args) > 2:
        import copy

        request = copy.copy(request)
        request.arguments = request.args[:2]
    return request


def _max_tiles(transform: Any) -> int | None:
    image_transform = getattr(transform, "image_transform", None)
    return getattr(image_transform, "max_num_tiles", None)


class TunesmithVLM(TunesmithLM):
    """lm-eval model for image+text tasks, backed by a tunesmith fusion model.

    Args:
        model: a ``DeepFusionModel`` (``forward(tokens, encoder_input=, encoder_mask=, ...)``).
        transform: its model transform (``llama3_2_vision_transform``): ``tokenizer``,
            ``__call__({"messages": [...]}, inference=True)``, ``pad_id``, ``stop_tokens``.
        image_tag: the placeholder lm-eval tasks put where an image goes (MMMU: ``<image>``).
        Other arguments as :class:`TunesmithLM` (text requests use them unchanged).
    """

    MULTIMODAL = True

    def __init__(
        self,
        model: nn.Module,
        transform: Any,
        *,
        image_tag: str = DEFAULT_IMAGE_TAG,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, transform.tokenizer, **kwargs)
        self._transform = transform
        self.image_tag = image_tag

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[Any]:
        """Text requests only: scoring continuations of image+text contexts is not supported
        (use a generate_until task, as lm-eval's multimodal tasks are)."""
        if any(len(r.args) > 2 and r.args[2].get("visual") for r in requests):
            raise NotImplementedError(
                "TunesmithVLM scores loglikelihood requests of text-only tasks; this task asks "
                "for image+text loglikelihoods (multiple_choice with doc_to_image): use a "
                "generate_until task"
            )
        return super().loglikelihood([_text_request(r) for r in requests], disable_tqdm)

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Image+text requests (a third ``{"visual": [...]}`` argument) are answered about
        their images; the rest as text. Same-argument requests go in left-padded batches."""
        visual = [i for i, r in enumerate(requests) if len(r.args) > 2 and r.args[2].get("visual")]
        if not visual:
            return super().generate_until(requests, disable_tqdm)
        out: list[str | None] = [None] * len(requests)
        text_only = [i for i in range(len(requests)) if i not in set(visual)]
        if text_only:
            for i, t in zip(text_only, super().generate_until([requests[i] for i in text_only])):
                out[i] = t
        groups: dict[str, list[int]] = {}
        for i in visual:
            key = json.dumps(requests[i].args[1] or {}, sort_keys=True, default=str)
            groups.setdefault(key, []).append(i)
        for indices in groups.values():
            gen_kwargs = dict(requests[indices[0]].args[1] or {})
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                texts = self._generate_multimodal(
                    [requests[i].args[0] for i in chunk],
                    [list(requests[i].args[2]["visual"]) for i in chunk],
                    gen_kwargs,
                )
                for i, text in zip(chunk, texts, strict=True):
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args[:2], text)
        return [t if t is not None else "" for t in out]

    def _encode_multimodal(self, contexts: list[str], images: list[list[Any]]) -> dict[str, Any]:
        """Contexts + their images -> one right-padded collated batch (see the module doc)."""
        from tunesmith.data._vision_collate import padded_collate_tiled_images_and_mask

        samples = []
        for text, imgs in zip(contexts, images, strict=True):
            imgs = [im.convert("RGB") if getattr(im, "mode", "RGB") != "RGB" else im for im in imgs]
            sample = self._transform(
                {"messages": image_text_messages(text, imgs, self.image_tag)}, inference=True
            )
            sample["labels"] = list(sample["tokens"])
            samples.append(sample)
        # every image padded to the transform's max tiles, as transformers' processor does:
        # Meta's / transformers' ViT lets real patches attend to padding tiles, so the
        # answer depends on how many there are
        return padded_collate_tiled_images_and_mask(
            samples, padding_idx=self._transform.pad_id, pad_max_tiles=_max_tiles(self._transform)
        )

    def _generate_multimodal(
        self, contexts: list[str], images: list[list[Any]], gen_kwargs: dict[str, Any]
    ) -> list[str]:
        from tunesmith.recipes._finetune_setup import batch_to_device

        opts = self._generation_settings(gen_kwargs)
        batch = self._encode_multimodal(contexts, images)
        pad = int(self._transform.pad_id)
        tokens, valid, encoder_mask = _left_pad(batch, pad)
        longest = int(valid.sum(dim=1).max())
        if longest + opts["max_new"] > self.max_length:
            raise ValueError(
                f"an image+text prompt of {longest} tokens + max_gen_toks {opts['max_new']} "
                f"exceeds max_seq_length {self.max_length}: raise max_seq_length (images "
                "cannot be truncated away)"
            )
        fusion = batch_to_device(
            {"encoder_input": batch["encoder_input"], "encoder_mask": encoder_mask}, self.device
        )
        generated = generate(
            self.model,
            tokens.to(self.device),
            opts["max_new"],
            temperature=opts["temperature"],
            top_k=opts["top_k"],
            top_p=opts["top_p"],
            stop_tokens=self._stop_tokens(),
            pad_id=pad,
            prompt_mask=valid.to(self.device),
            use_cache=self.enable_kv_cache,
            **fusion,
        )
        return self._texts(generated[:, tokens.shape[1] :], opts["until"])
