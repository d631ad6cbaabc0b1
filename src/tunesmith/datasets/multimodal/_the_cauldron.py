"""``the_cauldron_dataset`` (torchtune's name and arguments) over a lazy multimodal dataset.

Rows are read with ``datasets`` (hub names or local files); images are decoded and
transformed one sample at a time in ``__getitem__``, never all in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch.utils.data import Dataset

from tunesmith.data._messages import DataRowError, Message
from tunesmith.data._packing import CROSS_ENTROPY_IGNORE_IDX
from tunesmith.datasets._loading import load_rows

__all__ = [
    "MultimodalSFTDataset",
    "TheCauldronToMessages",
    "the_cauldron_dataset",
    "the_cauldron_transform",
]


class TheCauldronToMessages:
    """The Cauldron row ``{"images": [...], "texts": [{"user", "assistant"}, ...]}`` ->
    messages; every image goes before the first user turn's text (torchtune's rule)."""

    def __init__(
        self, column_map: Mapping[str, str] | None = None, new_system_prompt: str | None = None
    ):
        if column_map is not None:
            for key in ("images", "texts"):
                if key not in column_map:
                    raise ValueError(
                        f"dataset.column_map must map '{key}' to your column name if specified"
                    )
        self.column_map = dict(column_map or {"images": "images", "texts": "texts"})
        self.new_system_prompt = new_system_prompt

    def __call__(self, row: Mapping[str, Any]) -> dict[str, list[Message]]:
        images = row[self.column_map["images"]] or []
        if not isinstance(images, list):
            images = [images]
        image_parts = [{"type": "image", "content": image} for image in images]
        messages = []
        if self.new_system_prompt is not None:
            messages.append(Message(role="system", content=self.new_system_prompt, masked=True))
        for i, turn in enumerate(row[self.column_map["texts"]]):
            user = [{"type": "text", "content": turn["user"]}]
            messages.append(
                Message(role="user", content=(image_parts + user) if i == 0 else user, masked=True)
            )
            messages.append(Message(role="assistant", content=turn["assistant"]))
        return {"messages": messages}


class MultimodalSFTDataset(Dataset):
    """Rows -> ``message_transform`` -> ``model_transform`` (e.g. ``llama3_2_vision_transform``)
    per item: ``{"tokens", "labels", "encoder_input", "encoder_mask"}`` (labels -100 where
    masked). Images are opened in ``__getitem__`` of their row only.

    Before training (in ``__init__``) every row's image column is checked without decoding:
    a missing file, a file that is no image, a count of ``image_tag`` in ``text_column`` that
    does not match the row's images, an image for a ``model_transform`` with no image
    transform (a text-only model). Each raises one :class:`DataRowError` naming the row and
    column; a truncated image found later raises the same way when its row is read.
    """

    # the finetune recipe collates with the model transform's ``collate`` (Qwen2.5-VL) or
    # else padded_collate_tiled_images_and_mask
    multimodal = True

    def __init__(
        self,
        *,
        source: str,
        message_transform: Callable[[Mapping[str, Any]], Mapping[str, Any]],
        model_transform: Callable[..., dict[str, Any]],
        filter_fn: Callable | None = None,
        image_column: str | None = None,
        image_dir: str | None = None,
        image_tag: str | None = None,
        text_column: str | None = None,
        **load_dataset_kwargs: Any,
    ):
        self._source = source
        self._data, self._load_kwargs = load_rows(source, filter_fn, **load_dataset_kwargs)
        self._message_transform = message_transform
        self._model_transform = model_transform
        if image_column is not None:
            self._preflight(image_column, image_dir, image_tag, text_column)

    def __len__(self) -> int:
        return len(self._data)

    def _where(self) -> str:
        from tunesmith.datasets._loading import describe

        return describe(self._source, self._load_kwargs)

    def _preflight(
        self, column: str, image_dir: str | None, tag: str | None, text_column: str | None
    ) -> None:
        from tunesmith.datasets._images import check_row_images

        sees_images = hasattr(self._model_transform, "image_transform")
        placeholder = getattr(self._model_transform, "image_placeholder_text", None)
        rows = _undecoded(self._data, column)
        if rows is None:  # a column of decoded images (hub datasets): checked when read
            return
        for index in range(len(rows)):
            try:
                check_row_images(
                    rows[index], column, image_dir, tag, text_column, sees_images, placeholder
                )
            except DataRowError as e:
                raise DataRowError(
                    e.reason, column=e.column, row_index=index, source=self._where(), fix=e.fix
                ) from None

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            sample = dict(self._message_transform(self._data[index]))
            out = self._model_transform(sample)
        except DataRowError as e:
            raise DataRowError(
                e.reason, column=e.column, row_index=index, source=self._where(), fix=e.fix
            ) from None
        except (KeyError, ValueError, OSError) as e:
            raise DataRowError(str(e), row_index=index, source=self._where()) from None
        tokens, mask = out["tokens"], out["mask"]
        labels = [CROSS_ENTROPY_IGNORE_IDX if m else t for t, m in zip(tokens, mask)]
        return {
            "tokens": tokens,
            "labels": labels,
            "encoder_input": out.get("encoder_input", {}),
            "encoder_mask": out.get("encoder_mask", []),
        }


def _undecoded(data: Any, column: str) -> Any:
    """``data`` with ``column`` read without decoding images (paths stay paths), or None when
    the column holds image features that cannot be read undecoded cheaply."""
    features = getattr(data, "features", None)
    feature = features.get(column) if features is not None else None
    if feature is None or type(feature).__name__ == "Value":
        return data
    if type(feature).__name__ == "Image":
        from datasets import Image

        return data.cast_column(column, Image(decode=False))
    inner = getattr(feature, "feature", feature[0] if isinstance(feature, list) else None)
    if type(inner).__name__ == "Value":
        return data
    return None


def the_cauldron_dataset(
    model_transform: Any,
    *,
    subset: str,
    source: str = "HuggingFaceM4/the_cauldron",
    column_map: Mapping[str, str] | None = None,
    new_system_prompt: str | None = None,
    packed: bool = False,
    filter_fn: Callable | None = None,
    split: str = "train",
    **load_dataset_kwargs: Any,
) -> Any:
    """The Cauldron (``subset``, e.g. ``ocrvqa``) as image + text chat samples.

        Local copies work as for every builder (``source: json|parquet``, ``data_files``; the
        ``images`` column then holds paths or bytes). ``packed=True`` packs samples and their
    images (``PackedMultimodalDataset``).
    """
    from tunesmith.datasets._common import is_hub_source

    if is_hub_source(source):
        load_dataset_kwargs.setdefault("name", subset)
    transform = TheCauldronToMessages(column_map, new_system_prompt)
    from tunesmith.datasets.multimodal._packed import maybe_pack_multimodal

    ds = MultimodalSFTDataset(
        source=source,
        message_transform=transform,
        model_transform=model_transform,
        filter_fn=filter_fn,
        split=split,
        image_column=transform.column_map["images"],
        **load_dataset_kwargs,
    )
    return maybe_pack_multimodal(ds, model_transform, packed)


def the_cauldron_transform(
    model_transform: Any = None,
    texts_col: str = "texts",
    images_col: str = "images",
    new_system_prompt: str | None = None,
) -> Any:
    """torchtune main's ``the_cauldron_transform``: the row -> messages (-> tokens, when
    ``model_transform`` is given) transform alone, for a ``datasets:`` mix entry.

    Returns an ``SFTTransform``: a Cauldron row -> ``{"messages"}`` (images before the first
    user turn's text), then ``model_transform``'s ``{"tokens", "mask", ...}`` plus ``labels``.
    """
    from tunesmith.datasets._sft import SFTTransform

    messages = TheCauldronToMessages({"texts": texts_col, "images": images_col}, new_system_prompt)
    return SFTTransform(message_transform=messages, model_transform=model_transform)
