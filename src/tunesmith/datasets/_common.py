"""Helpers shared by the dataset builders."""

from __future__ import annotations

from typing import Any

from tunesmith.datasets._packed import PackedDataset

__all__: list[str] = []

# ``datasets`` builders for local files: hub-only arguments (config names, data_dir) are
# not passed to them.
LOCAL_BUILDERS = ("json", "parquet", "csv", "arrow", "text", "pandas")


def is_hub_source(source: str) -> bool:
    """True for a hub dataset name, False for a local-file builder or a local path."""
    from pathlib import Path

    return source not in LOCAL_BUILDERS and not Path(source).expanduser().exists()


def maybe_pack(ds: Any, tokenizer: Any, packed: bool, split_across_pack: bool = False) -> Any:
    """``ds`` itself, or a ``PackedDataset`` of it with the tokenizer's ``max_seq_len``."""
    if not packed:
        return ds
    max_seq_len, pad_id = pack_length(tokenizer)
    return PackedDataset(
        ds, max_seq_len=max_seq_len, padding_idx=pad_id, split_across_pack=split_across_pack
    )


def pack_length(tokenizer: Any) -> tuple[int, int]:
    """``(max_seq_len, pad_id)`` of the tokenizer (or model transform) for packing; pad id 0
    when it has none. Raises ``ConfigError`` (a ``ValueError``) naming
    ``tokenizer.max_seq_len`` when unset."""
    from tunesmith.config import ConfigError

    max_seq_len = getattr(tokenizer, "max_seq_len", None)
    if max_seq_len is None:
        raise ConfigError(
            "dataset.packed=True needs the tokenizer's max_seq_len (the pack length): set "
            "tokenizer.max_seq_len in the config, e.g. tokenizer.max_seq_len=2048",
            key="tokenizer.max_seq_len",
        )
    pad_id = getattr(tokenizer, "pad_id", None)
    return int(max_seq_len), 0 if pad_id is None else int(pad_id)


def sft_dataset(
    tokenizer: Any,
    message_transform: Any,
    *,
    source: str,
    filter_fn: Any = None,
    split: str = "train",
    packed: bool = False,
    split_across_pack: bool = False,
    **load_dataset_kwargs: Any,
) -> Any:
    """An ``SFTDataset`` of ``source`` through ``message_transform`` and the tokenizer,
    packed when ``packed=True`` (the shared tail of every SFT builder)."""
    from tunesmith.datasets._sft import SFTDataset

    ds = SFTDataset(
        source=source,
        message_transform=message_transform,
        model_transform=tokenizer,
        filter_fn=filter_fn,
        split=split,
        **load_dataset_kwargs,
    )
    return maybe_pack(ds, tokenizer, packed, split_across_pack)
