"""``vqa_dataset``, ``multimodal_chat_dataset``, ``llava_instruct_dataset`` (torchtune's
names and arguments) over :class:`MultimodalSFTDataset`.

``packed=True`` packs samples and their images (:class:`PackedMultimodalDataset`). Rows are
read with ``datasets`` (hub names, or ``source: json`` + ``data_files`` and an
``image_dir`` offline); each image is opened in ``__getitem__`` of its row only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tunesmith.data._message_transforms import InputOutputToMessages, ShareGPTToMessages
from tunesmith.datasets.multimodal._packed import PackedMultimodalDataset, maybe_pack_multimodal
from tunesmith.datasets.multimodal._the_cauldron import MultimodalSFTDataset

__all__ = ["llava_instruct_dataset", "multimodal_chat_dataset", "vqa_dataset"]


def vqa_dataset(
    model_transform: Any,
    *,
    source: str,
    image_dir: str | None = None,
    column_map: Mapping[str, str] | None = None,
    new_system_prompt: str | None = None,
    packed: bool = False,
    filter_fn: Callable | None = None,
    split: str = "train",
    **load_dataset_kwargs: Any,
) -> MultimodalSFTDataset | PackedMultimodalDataset:
    """Visual question answering rows ``{"input", "output", "image"}`` -> user (image, then
    the question), assistant (the answer). ``image`` holds a path relative to ``image_dir``
    (or an image object when ``image_dir`` is None, e.g. a ``datasets.Image`` column)."""
    transform = InputOutputToMessages(
        column_map=column_map, new_system_prompt=new_system_prompt, image_dir=image_dir
    )
    ds = MultimodalSFTDataset(
        source=source,
        message_transform=transform,
        model_transform=model_transform,
        filter_fn=filter_fn,
        split=split,
        image_column=transform.column_map["image"],
        image_dir=image_dir,
        **load_dataset_kwargs,
    )
    return maybe_pack_multimodal(ds, model_transform, packed)


def multimodal_chat_dataset(
    model_transform: Any,
    *,
    source: str,
    column_map: Mapping[str, str] | None = None,
    new_system_prompt: str | None = None,
    packed: bool = False,
    image_tag: str | None = None,
    image_dir: str | None = None,
    filter_fn: Callable | None = None,
    split: str = "train",
    **load_dataset_kwargs: Any,
) -> MultimodalSFTDataset | PackedMultimodalDataset:
    """ShareGPT-style conversations (``{"conversations": [{"from", "value"}], "image"}``)
    with one image per row, loaded from ``image_dir`` and put where ``image_tag`` is in the
    first user turn (before its text)."""
    transform = ShareGPTToMessages(
        column_map=column_map,
        new_system_prompt=new_system_prompt,
        image_dir=image_dir,
        image_tag=image_tag,
    )
    ds = MultimodalSFTDataset(
        source=source,
        message_transform=transform,
        model_transform=model_transform,
        filter_fn=filter_fn,
        split=split,
        image_column=transform.column_map["image"],
        image_dir=image_dir,
        image_tag=image_tag,
        text_column=transform.column_map["conversations"],
        **load_dataset_kwargs,
    )
    return maybe_pack_multimodal(ds, model_transform, packed)


def llava_instruct_dataset(
    model_transform: Any,
    *,
    source: str = "liuhaotian/LLaVA-Instruct-150K",
    image_dir: str = "coco/train2017/",
    column_map: Mapping[str, str] | None = None,
    new_system_prompt: str | None = None,
    packed: bool = False,
    filter_fn: Callable | None = None,
    split: str = "train",
    data_files: str = "llava_instruct_150k.json",
    **load_dataset_kwargs: Any,
) -> MultimodalSFTDataset | PackedMultimodalDataset:
    """LLaVA-Instruct-150K (``conversations`` + a COCO ``image`` file name) with the
    ``<image>`` tag; local copies: ``source: json``, ``data_files``, ``image_dir``."""
    return multimodal_chat_dataset(
        model_transform,
        source=source,
        column_map=column_map or {"conversations": "conversations", "image": "image"},
        new_system_prompt=new_system_prompt,
        packed=packed,
        image_tag="<image>",
        image_dir=image_dir,
        filter_fn=filter_fn,
        split=split,
        data_files=data_files,
        **load_dataset_kwargs,
    )
