"""Weighted mixes of several datasets: torchtune main's ``datasets:`` list + ``dataloader:``.

torchtune's ``dev/lora_finetune_distributed_multi_dataset`` recipe (config
``dev/11B_lora_multi_dataset``) reads a list of datasets, each ``{source, subset, split,
transform, weight, ...}``, and samples from them by weight with torchdata's
``MultiNodeWeightedSampler``. tunesmith runs those configs in its ``finetune`` recipe: the
mix is a map-style dataset whose order is drawn once from ``seed``, so it shards, resumes
and packs like any other dataset and every rank sees the same schedule.

The stop criteria follow torchdata's ``StopCriteria``: a source is *exhausted* when a draw
finds it empty.

- ``CYCLE_UNTIL_ALL_DATASETS_EXHAUSTED`` (default): an exhausted source starts again; the
  mix ends when every source has been exhausted once.
- ``ALL_DATASETS_EXHAUSTED``: an exhausted source leaves the draw (the weights of the
  others are renormalised); the mix ends when none is left.
- ``FIRST_DATASET_EXHAUSTED``: the mix ends at the first exhausted source.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

__all__ = ["STOP_CRITERIA", "WeightedMixDataset", "build_dataset_mix", "get_multi_dataset"]

STOP_CRITERIA = (
    "CYCLE_UNTIL_ALL_DATASETS_EXHAUSTED",
    "ALL_DATASETS_EXHAUSTED",
    "FIRST_DATASET_EXHAUSTED",
)
# torchtune's get_multi_dataset default carries this spelling
_ALIASES = {"CYCLE_UNTIL_ALL_DATASETS_EXHASTED": "CYCLE_UNTIL_ALL_DATASETS_EXHAUSTED"}

DATALOADER_KEYS = frozenset(
    {"shuffle", "collate_fn", "parallel_method", "num_workers", "pin_memory", "packed"}
    | {"prefetch_factor", "stop_criteria", "streaming"}
)
"""The keys of torchtune's ``dataloader:`` block (torchdata nodes settings)."""


def _stop_criterion(name: Any) -> str | None:
    """``name`` as one of :data:`STOP_CRITERIA` (torchtune's misspelling accepted), or None."""
    name = _ALIASES.get(str(name), str(name))
    return name if name in STOP_CRITERIA else None


class WeightedMixDataset(Dataset):
    """Samples from several datasets in proportion to their weights.

    Args:
        datasets: name -> map-style dataset.
        weights: name -> weight (> 0; normalised over the sources still drawn).
        stop_criteria: one of :data:`STOP_CRITERIA`.
        seed: seeds the draw of sources; the schedule is the same on every rank.
        shuffle: name -> whether that source's rows are read in a seeded random order
            (default: in order).

    ``mix[i]`` is ``datasets[name][row]`` for the ``i``-th draw; ``sources()`` gives the
    ``[len(mix)]`` names drawn, ``schedule`` the ``[len(mix), 2]`` (source index, row) pairs.
    """

    def __init__(
        self,
        datasets: Mapping[str, Dataset],
        weights: Mapping[str, float],
        stop_criteria: str = "CYCLE_UNTIL_ALL_DATASETS_EXHAUSTED",
        seed: int = 0,
        shuffle: Mapping[str, bool] | None = None,
    ):
        stop = _stop_criterion(stop_criteria)
        if stop is None:
            raise ValueError(
                f"dataloader.stop_criteria={stop_criteria!r} is not one of {', '.join(STOP_CRITERIA)}"
            )
        if set(datasets) != set(weights):
            raise ValueError(
                f"weights name {sorted(weights)} but the datasets are {sorted(datasets)}"
            )
        for name, w in weights.items():
            if not float(w) > 0:
                raise ValueError(f"datasets[{name}].weight={w}: a weight must be > 0")
        self.names = list(datasets)
        self.datasets = [datasets[n] for n in self.names]
        self.stop_criteria = stop
        sizes = [len(d) for d in self.datasets]
        for name, size in zip(self.names, sizes):
            if size == 0:
                raise ValueError(f"datasets[{name}] has no samples")
        rng = np.random.default_rng(seed)
        shuffle = shuffle or {}
        orders = [
            rng.permutation(n) if shuffle.get(name, False) else np.arange(n)
            for name, n in zip(self.names, sizes)
        ]
        self.schedule = _draw(np.array([float(weights[n]) for n in self.names]), orders, stop, rng)

    def __len__(self) -> int:
        return len(self.schedule)

    def __getitem__(self, index: int) -> Any:
        source, row = self.schedule[index]
        return self.datasets[int(source)][int(row)]

    def sources(self) -> list[str]:
        """The name of the source of every sample, in order."""
        return [self.names[int(s)] for s in self.schedule[:, 0]]

    @property
    def multimodal(self) -> bool:
        return any(getattr(d, "multimodal", False) for d in self.datasets)


def _draw(
    weights: np.ndarray, orders: Sequence[np.ndarray], stop: str, rng: np.random.Generator
) -> np.ndarray:
    """The ``[n, 2]`` (source, row) schedule under ``stop`` (see the module docstring)."""
    pos = [0] * len(orders)
    exhausted = [False] * len(orders)
    active = [True] * len(orders)
    out: list[tuple[int, int]] = []
    while True:
        p = np.where(active, weights, 0.0)
        k = int(rng.choice(len(orders), p=p / p.sum()))
        if pos[k] == len(orders[k]):  # this draw finds the source empty
            exhausted[k] = True
            if (
                stop == "FIRST_DATASET_EXHAUSTED"
                or all(exhausted)
                and stop != "ALL_DATASETS_EXHAUSTED"
            ):
                break
            if stop == "ALL_DATASETS_EXHAUSTED":
                active[k] = False
                if not any(active):
                    break
                continue
            pos[k] = 0  # cycle: start the source again
        out.append((k, int(orders[k][pos[k]])))
        pos[k] += 1
    return np.asarray(out, dtype=np.int64).reshape(-1, 2)


def get_multi_dataset(
    datasets: Mapping[str, Dataset],
    weights: Mapping[str, float],
    stop_criteria: str = "CYCLE_UNTIL_ALL_DATASETS_EXHAUSTED",
    seed: int = 0,
) -> WeightedMixDataset:
    """torchtune main's ``get_multi_dataset`` (a torchdata weighted sampler there): a
    :class:`WeightedMixDataset` of map-style datasets here."""
    return WeightedMixDataset(datasets, weights, stop_criteria=stop_criteria, seed=seed)


def build_dataset_mix(
    entries: Sequence[Mapping[str, Any]],
    dataloader: Mapping[str, Any] | None,
    tokenizer: Any,
    seed: int = 0,
) -> WeightedMixDataset:
    """torchtune's ``datasets:`` list (+ ``dataloader:`` block) -> one weighted mix.

    Each entry: ``source`` (hub name, or ``json``/``parquet``/... with ``data_files``),
    ``subset`` (the hub config name), ``split``, ``transform`` (a ``_component_`` returning
    the row -> messages transform, e.g. ``the_cauldron_transform``), ``weight``, optional
    ``name``, ``shuffle``, ``filter_fn`` and ``datasets.load_dataset`` arguments. The
    tokenizer (the model transform) is applied per sample, as torchtune's loader does.

    Raises:
        ConfigError: naming ``datasets[i].key`` or ``dataloader.key`` for a missing weight or
            transform, an unknown ``dataloader`` key, ``packed``/``streaming`` (not supported
            for a mix), or a bad stop criterion.
    """
    from tunesmith.config import ConfigError, instantiate

    dataloader = dict(dataloader or {})
    for key in dataloader:
        if key not in DATALOADER_KEYS:
            raise ConfigError(
                f"dataloader.{key}: unknown key; the dataloader block takes "
                f"{', '.join(sorted(DATALOADER_KEYS))}",
                key=f"dataloader.{key}",
            )
    if dataloader.get("packed"):
        raise ConfigError(
            "dataloader.packed=True: a weighted mix of datasets is not packed; set "
            "dataloader.packed=False, or pack one dataset with dataset.packed=True",
            key="dataloader.packed",
        )
    given = dataloader.get("stop_criteria", STOP_CRITERIA[0])
    stop = _stop_criterion(given)
    if stop is None:
        raise ConfigError(
            f"dataloader.stop_criteria={given!r}: use one of {', '.join(STOP_CRITERIA)}",
            key="dataloader.stop_criteria",
        )
    if dataloader.get("parallel_method", "thread") not in ("thread", "process"):
        raise ConfigError(
            f"dataloader.parallel_method={dataloader['parallel_method']!r}: use 'thread' or "
            "'process'",
            key="dataloader.parallel_method",
        )
    if not entries:
        raise ConfigError("datasets: the list is empty; name at least one dataset", key="datasets")
    default_shuffle = bool(dataloader.get("shuffle", True))
    datasets: dict[str, Dataset] = {}
    weights: dict[str, float] = {}
    shuffle: dict[str, bool] = {}
    for i, raw in enumerate(entries):
        entry = dict(raw)
        where = f"datasets[{i}]"
        for required in ("source", "transform", "weight"):
            if required not in entry:
                raise ConfigError(
                    f"{where}.{required}: missing; every dataset of the mix needs one",
                    key=f"{where}.{required}",
                )
        if entry.get("streaming", dataloader.get("streaming", False)):
            raise ConfigError(
                f"{where}.streaming=True: tunesmith reads a mix's datasets map-style (rows are "
                "loaded lazily anyway); set streaming: False",
                key=f"{where}.streaming",
            )
        label = entry.pop("name", None) or entry.get("subset")
        key = f"{i}" + (f"_{label}" if label else "")
        try:
            weights[key] = float(entry.pop("weight"))
        except (TypeError, ValueError):
            raise ConfigError(
                f"{where}.weight: must be a number > 0", key=f"{where}.weight"
            ) from None
        if not weights[key] > 0:
            raise ConfigError(f"{where}.weight={weights[key]}: must be > 0", key=f"{where}.weight")
        transform = instantiate(entry.pop("transform"))
        if getattr(transform, "model_transform", None) is not None:
            raise ConfigError(
                f"{where}.transform: leave its model_transform unset; the recipe applies the "
                "tokenizer to every dataset of the mix",
                key=f"{where}.transform",
            )
        shuffle[key] = bool(entry.pop("shuffle", default_shuffle))
        for ignored in ("streaming", "parallel_method", "num_workers"):
            entry.pop(ignored, None)
        if "subset" in entry:  # the hub dataset's config name; local files have none
            from tunesmith.datasets._common import is_hub_source

            subset = entry.pop("subset")
            if is_hub_source(str(entry["source"])):
                entry["name"] = subset
        datasets[key] = _entry_dataset(entry, transform, tokenizer)
    return WeightedMixDataset(datasets, weights, stop_criteria=stop, seed=seed, shuffle=shuffle)


def _entry_dataset(entry: dict[str, Any], transform: Any, tokenizer: Any) -> Dataset:
    """One entry's rows -> ``transform`` (row -> messages) -> tokenizer, read per sample."""
    source = entry.pop("source")
    filter_fn = entry.pop("filter_fn", None)
    if hasattr(tokenizer, "image_transform"):  # a vision model's transform: images per item
        from tunesmith.datasets.multimodal._the_cauldron import MultimodalSFTDataset

        columns = getattr(getattr(transform, "message_transform", None), "column_map", None)
        return MultimodalSFTDataset(  # image files checked up front where the column is known
            source=source,
            message_transform=transform,
            model_transform=tokenizer,
            filter_fn=filter_fn,
            image_column=(columns or {}).get("images"),
            **entry,
        )
    from tunesmith.datasets._sft import SFTDataset

    ds = SFTDataset(
        source=source,
        message_transform=transform,
        model_transform=tokenizer,
        filter_fn=filter_fn,
        **entry,
    )
    ds.drop_untrained_rows()
    return ds
