"""The finetune recipe's training data settings: ``dataset`` (one node or a list), or torchtune
main's weighted ``datasets:`` mix with its ``dataloader:`` block (``tunesmith.datasets._mix``).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig
from torch.utils.data import Dataset

from tunesmith.config import ConfigError
from tunesmith.config._instantiate import _to_plain
from tunesmith.recipes._finetune_setup import build_datasets

__all__ = ["loader_setting", "training_datasets"]


def training_datasets(cfg: DictConfig, tokenizer: Any) -> list[Dataset]:
    """The run's training data: ``dataset`` (one node or a list, concatenated), or torchtune
    main's ``datasets`` list sampled by weight (``tunesmith.datasets._mix``)."""
    if cfg.get("datasets") is None:
        return build_datasets(cfg.dataset, tokenizer)
    from tunesmith.datasets._mix import build_dataset_mix

    if cfg.get("dataset") is not None:
        raise ConfigError(
            "dataset and datasets are both set: use dataset (one or a list, concatenated) or "
            "datasets (a weighted mix), not both",
            key="datasets",
        )
    if not isinstance(cfg.datasets, ListConfig):
        raise ConfigError("datasets: must be a list of datasets with weights", key="datasets")

    entries = []
    for i, node in enumerate(cfg.datasets):
        entry = _to_plain(node, f"datasets.{i}")  # a bad ${...} is one line naming the key
        if isinstance(entry, dict) and "transform" in entry:
            entry["transform"] = node["transform"]  # instantiated as a config node
        entries.append(entry)
    seed = cfg.get("seed")
    loader = _to_plain(cfg.get("dataloader"), "dataloader")
    mix = build_dataset_mix(entries, loader, tokenizer, seed=0 if seed is None else int(seed))
    return [mix]


def loader_setting(cfg: DictConfig, key: str, default: Any) -> Any:
    """``dataloader.<key>`` where the config has torchtune main's ``dataloader`` block, else
    the top-level ``<key>``."""
    block = cfg.get("dataloader")
    if block is not None and key in block:
        return block[key]
    value = cfg.get(key)
    return default if value is None else value
