"""Preference data for the recipes that train on pairs (``dpo``, ``reward_model``): the
dataset(s), checked before any weights load, and their resumable distributed loader.

Paired batches come from ``padded_collate_dpo`` (``dpo``) or ``padded_collate_reward``
(``reward_model``: the same rows plus a real-token mask); KTO's unpaired rows from
``tunesmith.datasets.padded_collate_kto``. Image + text pairs
(``multimodal_preference_dataset``, ``dpo`` with pairwise losses) come from
``padded_collate_vision_dpo``: the model's image collate of the chosen then rejected rows, a
dict batch with the image inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig
from torch.utils.data import DataLoader, Dataset

from tunesmith.config import ConfigError
from tunesmith.datasets._unpaired import UNPAIRED_KEYS
from tunesmith.recipes._finetune_setup import build_datasets, is_packed, sampled_loader
from tunesmith.recipes._preference_step import IGNORE_INDEX

__all__ = [
    "PREFERENCE_KEYS",
    "build_preference_datasets",
    "build_preference_dataloader",
    "padded_collate_reward",
]

PREFERENCE_KEYS = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")


def padded_collate_reward(
    batch: Sequence[Mapping[str, Any]], padding_idx: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Preference pairs -> ``(tokens [2b, s], mask [2b, s] bool)``, right-padded with
    ``padding_idx``: rows ``:b`` chosen, ``b:`` rejected; ``mask`` is True at real tokens
    (the pad id may also be a real token, e.g. EOS, so it is not inferred from the ids)."""
    rows = [list(x["chosen_input_ids"]) for x in batch]
    rows += [list(x["rejected_input_ids"]) for x in batch]
    length = max(len(r) for r in rows)
    tokens = torch.full((len(rows), length), padding_idx, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        mask[i, : len(r)] = True
    return tokens, mask


def build_preference_datasets(
    dataset_cfg: DictConfig | ListConfig,
    tokenizer: Any,
    *,
    unpaired: bool = False,
    reward: bool = False,
) -> list[Dataset]:
    """Preference dataset(s), checked before any weights load (see ``build_datasets``: every
    pair is tokenized once and pairs with an untrained side are left out).
    Image + text pairs (``multimodal_preference_dataset``) are refused for KTO (``unpaired``)
    and the reward model (``reward``).

    The first sample is read up front, so a dataset of the wrong kind fails before training,
    naming the component. ``unpaired`` (KTO): unpaired datasets (``kto_dataset``) are used as
    they are and paired ones are split (``split_preference_pairs``).
    """
    from tunesmith.datasets import split_preference_pairs

    if is_packed(dataset_cfg):
        raise ConfigError(
            "dataset.packed=True: preference pairs cannot be packed; set dataset.packed=False",
            key="dataset.packed",
        )
    nodes = list(dataset_cfg) if isinstance(dataset_cfg, ListConfig) else [dataset_cfg]
    datasets = build_datasets(dataset_cfg, tokenizer)
    images = [getattr(ds, "multimodal", False) for ds in datasets]
    if any(images) and (unpaired or reward or not all(images)):
        what = (
            "KTO (unpaired rows)" if unpaired
            else "the reward_model recipe" if reward
            else "a mix of image and text-only datasets"
        )  # fmt: skip
        raise ConfigError(
            f"dataset: image + text preference pairs are not supported with {what}; use "
            "multimodal_preference_dataset alone with the dpo recipe and a pairwise loss "
            "(DPOLoss, RSOLoss, IPOLoss, SimPOLoss, ORPOLoss)",
            key="dataset._component_",
        )
    for i, (node, ds) in enumerate(zip(nodes, datasets)):
        sample = ds[0]
        if unpaired and all(k in sample for k in UNPAIRED_KEYS):
            continue
        missing = [k for k in PREFERENCE_KEYS if k not in sample]
        if missing:
            kind = "unpaired rows or preference pairs" if unpaired else "preference pairs"
            raise ConfigError(
                f"dataset._component_={node.get('_component_')} gives samples with keys "
                f"{sorted(sample)}, not {kind} (missing {missing}); the dpo recipe "
                "needs a preference dataset such as torchtune.datasets.preference_dataset or "
                "stack_exchange_paired_dataset"
                + (" (or tunesmith.datasets.kto_dataset for KTO)" if unpaired else ""),
                key="dataset._component_",
            )
        if unpaired:
            datasets[i] = split_preference_pairs(ds)
    return datasets


def build_preference_dataloader(
    datasets: list[Dataset],
    tokenizer: Any,
    *,
    batch_size: int,
    world_size: int,
    rank: int,
    seed: int,
    shuffle: bool = True,
    num_workers: int = 0,
    pin_memory: bool = False,
    unpaired: bool = False,
    kl_rows: bool = True,
    reward: bool = False,
) -> tuple[DataLoader, Any]:
    """Preference datasets (from ``build_preference_datasets``) -> resumable distributed
    sampler -> ``padded_collate_dpo``.

    Batches are ``(input_ids [2b, s], labels [2b, s])``: rows ``:b`` chosen, ``b:`` rejected.
    ``unpaired`` (KTO): ``padded_collate_kto`` batches ``(input_ids, labels, desirable [b])``,
    with the ``b`` mismatched KL rows after the ``b`` rows when ``kl_rows``. ``reward``:
    ``padded_collate_reward`` batches ``(tokens [2b, s], mask [2b, s])``. Image + text pairs:
    ``padded_collate_vision_dpo`` dicts ``{"tokens", "labels" [2b, s], "encoder_input", ...}``.
    """
    from tunesmith.data import padded_collate_dpo
    from tunesmith.data._vision_collate import image_collate, padded_collate_vision_dpo
    from tunesmith.datasets import padded_collate_kto

    pad_id = getattr(tokenizer, "pad_id", None)
    padding = 0 if pad_id is None else pad_id
    if any(getattr(ds, "multimodal", False) for ds in datasets):
        collate: Any = partial(
            padded_collate_vision_dpo,
            collate=image_collate(tokenizer),
            padding_idx=padding,
            ignore_idx=IGNORE_INDEX,
        )
    elif reward:
        collate = partial(padded_collate_reward, padding_idx=padding)
    elif unpaired:
        collate = partial(
            padded_collate_kto, padding_idx=padding, ignore_idx=IGNORE_INDEX, with_kl=kl_rows
        )
    else:
        collate = partial(padded_collate_dpo, padding_idx=padding, ignore_idx=IGNORE_INDEX)
    return sampled_loader(
        datasets,
        collate,
        batch_size=batch_size,
        world_size=world_size,
        rank=rank,
        seed=seed,
        shuffle=shuffle,
        num_workers=num_workers,
        pin_memory=pin_memory,
        unit="rows" if unpaired else "pairs",
    )
