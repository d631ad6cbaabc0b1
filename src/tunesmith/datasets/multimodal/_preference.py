"""``multimodal_preference_dataset``: image + text preference pairs for the ``dpo`` recipe.

Rows ``{"chosen": [{"role", "content"}...], "rejected": [...], "image": name | [names]}``
(torchtune's ``preference_dataset`` layout plus an image column; rename with
``column_map``). The row's images go before the text of the first user turn of both
conversations, and each side goes through the model transform (e.g.
``llama3_2_vision_transform``, ``qwen2_5_vl_transform``) on its own, so each side carries its
own image inputs and (Llama 3.2 Vision) cross-attention mask. Images are opened in
``__getitem__`` of their row only; the image column is checked without decoding first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tunesmith.data._message_transforms import ChosenRejectedToMessages, _image_part
from tunesmith.data._messages import DataRowError, Message
from tunesmith.data._packing import CROSS_ENTROPY_IGNORE_IDX
from tunesmith.datasets.multimodal._the_cauldron import MultimodalSFTDataset

__all__ = [
    "ImageChosenRejectedToMessages",
    "MultimodalPreferenceDataset",
    "multimodal_preference_dataset",
]

#: the keys of one side's image inputs in a pair (``padded_collate_vision_dpo`` reads them)
SIDE_KEYS = ("chosen_vision", "rejected_vision")


class ImageChosenRejectedToMessages:
    """Row -> ``{"chosen": [Message], "rejected": [Message]}`` with the row's images (``image``
    column: a path relative to ``image_dir``, bytes, an image object, or a list of them) as
    image parts before the text of each conversation's first user turn."""

    def __init__(
        self,
        train_on_input: bool = False,
        column_map: Mapping[str, str] | None = None,
        new_system_prompt: str | None = None,
        image_dir: str | Path | None = None,
    ):
        column_map = dict(column_map or {})
        self.image_column = column_map.pop("image", "image")
        self.text = ChosenRejectedToMessages(
            train_on_input=train_on_input,
            column_map=column_map or None,
            new_system_prompt=new_system_prompt,
        )
        self.column_map = {**self.text.column_map, "image": self.image_column}
        self.image_dir = Path(image_dir) if image_dir is not None else None

    def __call__(self, row: Mapping[str, Any]) -> dict[str, list[Message]]:
        if self.image_column not in row:
            raise DataRowError(
                f"missing column; the row has columns {sorted(row)}. Set column_map",
                column=self.image_column,
            )
        images = row[self.image_column]
        images = images if isinstance(images, list) else [images]
        parts = [_image_part(image, self.image_dir, self.image_column) for image in images]
        out = {}
        for side, messages in self.text(row).items():
            first_user = next((i for i, m in enumerate(messages) if m.role == "user"), None)
            if first_user is None:
                raise DataRowError("the conversation has no user turn", column=side)
            m = messages[first_user]
            messages = list(messages)
            messages[first_user] = Message(
                role="user",
                content=[*parts, *m.content],
                masked=m.masked,
                ipython=m.ipython,
                eot=m.eot,
            )
            out[side] = messages
        return out


class MultimodalPreferenceDataset(MultimodalSFTDataset):
    """Image + text preference pairs. Items: ``chosen_input_ids``, ``chosen_labels``,
    ``rejected_input_ids``, ``rejected_labels`` (lists of int; labels -100 where masked) and
    ``chosen_vision`` / ``rejected_vision``: that side's ``{"encoder_input", "encoder_mask"}``
    as the model transform returns them. Batch with
    :func:`~tunesmith.data._vision_collate.padded_collate_vision_dpo`. The image column is
    checked before training as :class:`MultimodalSFTDataset` checks it."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            pair = self._message_transform(self._data[index])
            out: dict[str, Any] = {}
            for side in ("chosen", "rejected"):
                sample = self._model_transform({"messages": pair[side]})
                tokens, mask = sample["tokens"], sample["mask"]
                out[f"{side}_input_ids"] = list(tokens)
                out[f"{side}_labels"] = [
                    CROSS_ENTROPY_IGNORE_IDX if m else t for t, m in zip(tokens, mask)
                ]
                out[f"{side}_vision"] = {
                    "encoder_input": sample.get("encoder_input", {}),
                    "encoder_mask": sample.get("encoder_mask", []),
                }
        except DataRowError as e:
            raise DataRowError(
                e.reason, column=e.column, row_index=index, source=self._where(), fix=e.fix
            ) from None
        except (KeyError, ValueError, OSError) as e:
            raise DataRowError(str(e), row_index=index, source=self._where()) from None
        return out


def multimodal_preference_dataset(
    model_transform: Any,
    *,
    source: str,
    image_dir: str | None = None,
    column_map: Mapping[str, str] | None = None,
    train_on_input: bool = False,
    new_system_prompt: str | None = None,
    packed: bool = False,
    filter_fn: Callable | None = None,
    split: str = "train",
    **load_dataset_kwargs: Any,
) -> MultimodalPreferenceDataset:
    """Image + text preference pairs (``{"chosen", "rejected", "image"}`` rows; hub names, or
    ``source: json`` + ``data_files`` and an ``image_dir`` offline) for the ``dpo`` recipe.
    ``train_on_input=False`` trains on assistant turns only. Packing is not supported."""
    if packed:
        raise ValueError(
            "Packed is currently not supported for preference datasets: set dataset.packed=False"
        )
    transform = ImageChosenRejectedToMessages(
        train_on_input=train_on_input,
        column_map=column_map,
        new_system_prompt=new_system_prompt,
        image_dir=image_dir,
    )
    return MultimodalPreferenceDataset(
        source=source,
        message_transform=transform,
        model_transform=model_transform,
        filter_fn=filter_fn,
        split=split,
        image_column=transform.image_column,
        image_dir=image_dir,
        **load_dataset_kwargs,
    )
