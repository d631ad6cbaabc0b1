"""A chat prompt as token ids, ending where the assistant's answer starts (generation,
rollouts, RL prompt datasets)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tunesmith.data._messages import Message

__all__ = ["prompt_tokens", "vision_prompt_batch"]


def _as_messages(prompt: Any) -> list[Message]:
    if isinstance(prompt, str):
        return [Message(role="user", content=prompt)]
    if isinstance(prompt, Mapping):
        unknown = set(prompt) - {"system", "user"}
        if unknown or not prompt.get("user"):
            raise ValueError(
                f"prompt must be a string or {{system: ..., user: ...}} with a user text; got "
                f"keys {sorted(prompt)}"
            )
        messages = []
        if prompt.get("system"):
            messages.append(Message(role="system", content=str(prompt["system"])))
        user = prompt["user"]
        if isinstance(user, Mapping):  # torchtune's {image: path | URL, text: ...}
            if set(user) - {"image", "text"} or not user.get("text"):
                raise ValueError(
                    f"prompt.user must be a text or {{image: ..., text: ...}}; got keys "
                    f"{sorted(user)}"
                )
            parts = [{"type": "image", "content": user["image"]}] if user.get("image") else []
            parts.append({"type": "text", "content": str(user["text"])})
            messages.append(Message(role="user", content=parts))
        else:
            messages.append(Message(role="user", content=str(user)))
        return messages
    raise ValueError(f"prompt must be a string or a {{system, user}} mapping, got {prompt!r}")


def prompt_tokens(tokenizer: Any, prompt: Any) -> list[int]:
    """Token ids of a chat prompt formatted by the tokenizer, ending where the answer starts."""
    messages = _as_messages(prompt) + [Message(role="assistant", content="")]
    tokens, _ = tokenizer.tokenize_messages(messages, add_end_tokens=False)
    return list(tokens)


def vision_prompt_batch(transform: Any, prompt: Any) -> dict[str, Any]:
    """One image + text prompt through a vision model transform (e.g.
    ``llama3_2_vision_transform``), collated as a batch of one: ``tokens [1, s]``,
    ``encoder_input`` (``images [1, I, T, C, H, W]``, ``aspect_ratio``, ``aspect_ratio_mask``)
    and ``encoder_mask [1, s, I*T*L]``, ending where the answer starts; a transform with its
    own ``collate`` (Qwen2.5-VL: ``encoder_input = {"pixel_values", "image_grid_thw"}``,
    ``input_pos [3, 1, s]``) collates itself."""
    from tunesmith.data._vision_collate import padded_collate_tiled_images_and_mask

    messages = _as_messages(prompt) + [Message(role="assistant", content="")]
    sample = transform({"messages": messages}, inference=True)
    sample["labels"] = list(sample["tokens"])
    collate = getattr(transform, "collate", None)
    if collate is not None:  # the transform's own batches (Qwen2.5-VL)
        batch = collate([sample], padding_idx=transform.pad_id)
    else:
        # images padded to the transform's max tiles, as transformers' processor does (the
        # ViT lets real patches attend to padding tiles, so their number changes the answer)
        max_tiles = getattr(getattr(transform, "image_transform", None), "max_num_tiles", None)
        batch = padded_collate_tiled_images_and_mask(
            [sample], padding_idx=transform.pad_id, pad_max_tiles=max_tiles
        )
    batch.pop("labels")
    return batch
