"""Setup steps of the finetune recipe, as plain functions: process group, model, data, saving.

Each function does one thing the recipe's top-to-bottom script calls once; nothing here
holds state between calls.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from tunesmith.config import ConfigError, instantiate
from tunesmith.modules.peft import get_adapter_params, is_adapter_key, set_trainable_params
from tunesmith.training.precision import set_default_dtype
from tunesmith.utils import get_logger

__all__ = [
    "adapter_config",
    "batch_to_device",
    "fuses_images",
    "build_dataloader",
    "build_datasets",
    "build_model",
    "check_vocab",
    "full_state_dicts",
    "local_device",
    "open_checkpointer",
    "start_training",
    "shift_labels",
    "validation_loss",
    "is_packed",
]

log = get_logger(__name__)


# ---------------------------------------------------------------------------------- processes
def local_device(device: torch.device) -> torch.device:
    """The device of this rank (``cuda:LOCAL_RANK`` under torchrun on GPUs)."""
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def start_training(cfg: DictConfig) -> tuple[torch.device, torch.dtype, int, int]:
    """The opening every training recipe shares: keep the run's log lines for ``run.log``,
    check every numeric key's range (named, before anything is built), pick the device,
    join the process group under torchrun, take this rank's device and the dtype, and log
    the runtime line. Returns ``(device, dtype, world_size, rank)``."""
    from tunesmith.config._ranges import check_ranges
    from tunesmith.training.distributed import get_world_size_and_rank, init_distributed
    from tunesmith.utils import get_device, get_dtype, log_runtime, start_run_log

    start_run_log()  # kept in <log folder>/run.log once the observer knows the folder
    check_ranges(cfg)
    device = get_device(cfg.get("device"))
    init_distributed(device_type=device.type)
    world_size, rank = get_world_size_and_rank()
    device = local_device(device)
    dtype = get_dtype(cfg.get("dtype"), device)
    log_runtime(device, rank)
    return device, dtype, world_size, rank


# -------------------------------------------------------------------------------- checkpointer
def open_checkpointer(cfg: DictConfig, resume: bool, resume_weights: bool | None = None) -> Any:
    """Pre-flight the output folders (earlier run, writable, free space), then instantiate
    ``cfg.checkpointer`` (weights not read yet). Top-level ``overwrite=True`` lets a new
    run replace an earlier run's checkpoints (at its first save, never up front).
    ``resume_weights=False``: a resumed run whose checkpointer still reads the base weights
    (the recipe resumes from sharded DCP folders); default: ``resume``."""
    from tunesmith.training.checkpointing import base_checkpoint_bytes, preflight_outputs

    node = cfg.checkpointer
    logger_node = cfg.get("metric_logger")
    log_dir = logger_node.get("log_dir") if isinstance(logger_node, DictConfig) else None
    replaces = []
    if node.get("output_dir") is not None:
        replaces = preflight_outputs(
            node.output_dir,
            resume=resume,
            overwrite=bool(cfg.get("overwrite", False)),
            log_dirs=[log_dir] if log_dir else [],
            need_bytes=base_checkpoint_bytes(node),
        )
    kwargs: dict[str, Any] = {
        "resume_from_checkpoint": resume if resume_weights is None else resume_weights
    }
    if cfg.get("keep_last_n_checkpoints") and "keep_last_n_checkpoints" not in node:
        kwargs["keep_last_n_checkpoints"] = cfg.keep_last_n_checkpoints
    checkpointer = instantiate(node, **kwargs)
    if replaces:
        checkpointer.replaces = replaces
    return checkpointer


# -------------------------------------------------------------------------------------- model
def build_model(
    cfg: DictConfig,
    state: Mapping[str, Any],
    device: torch.device,
    dtype: torch.dtype,
    world_size: int,
    mesh: Any = None,
    expert_parallel: int = 1,
) -> tuple[nn.Module, bool]:
    """Instantiate ``cfg.model``, load the checkpoint, pick what trains, wrap for memory/speed.

    ``expert_parallel`` > 1 (finetune's checked ``expert_parallel_dim``) splits the experts of
    every MoE layer over all ranks (``training.expert_parallel``).

    Returns ``(model, is_peft)``. When the model has adapter parameters (LoRA / DoRA /
    QLoRA builders) only they train; otherwise every parameter does.

    The model is built on the meta device, checkpointed and sharded (FSDP2, when
    ``world_size > 1``) there, and only then filled from the checkpoint: each rank
    materialises its own shards and nothing else. Fresh adapters come from the run's seed
    (``torch.initial_seed()``), identical on every rank and in a single process.

    With a ``mesh`` (:func:`parallel_layout`) whose ``tp`` dim is > 1 the model is first split
    by tensor parallelism (the config's ``tensor_parallel_plan`` or the per-layer-type default), then
    FSDP2 shards over the data-parallel dims (none when they are 1).
    """
    from tunesmith.training.activations import check_activation_offloading
    from tunesmith.training.meta_init import initial_adapter_weights, load_full_state_dict

    check_activation_offloading(cfg)  # before any heavy work
    with set_default_dtype(dtype), torch.device("meta"):
        model = instantiate(cfg.model)
    weights = dict(state["model"])
    weights.update(state.get("adapter") or {})
    adapter = get_adapter_params(model)
    check_weight_shapes(model, weights, str(cfg.model.get("_component_")))
    expected = set(model.state_dict())
    missing_base = [k for k in expected if k not in weights and k not in adapter]
    unexpected = [k for k in weights if k not in expected]
    if missing_base or unexpected:
        raise ValueError(
            f"the checkpoint does not fit model._component_={cfg.model.get('_component_')}: "
            f"missing {missing_base[:6]}, unexpected {unexpected[:6]} "
            f"(check checkpointer.checkpoint_dir / checkpoint_files / model_type)"
        )
    if adapter:
        set_trainable_params(model, adapter)
        full = getattr(model, "trainable_with_adapters", ())
        if full:  # parts built "full" next to LoRA (a vision model's merger / projection)
            log.warning(
                "%d parameters train fully next to the LoRA adapters (e.g. %s): the merged "
                "checkpoint holds them, the PEFT adapter (epoch_N/adapter) does not; set the "
                "part's *_trainable to 'lora' or 'frozen' for a complete adapter",
                len(full),
                full[0],
            )
        weights.update(initial_adapter_weights(model, weights, seed=torch.initial_seed()))
    ep = expert_parallel
    if ep > 1:  # checked against the world and the model by parallel_layout
        import torch.distributed as dist

        from tunesmith.training.expert_parallel import apply_expert_parallel, slice_expert_weights

        apply_expert_parallel(model, dist.group.WORLD)
        slice_expert_weights(model, weights)
        log.info("expert parallelism: the experts of every MoE layer split over %d ranks", ep)
    if mesh is not None and mesh["tp"].size() > 1:
        from tunesmith.recipes._parallel_setup import tensor_parallel
        from tunesmith.training.parallel_dims import ParallelDims

        tensor_parallel(model, cfg, mesh["tp"], ParallelDims.dp_mesh(mesh).size(-1))
    if cfg.get("enable_activation_checkpointing", False):
        from tunesmith.training.activations import apply_activation_checkpointing

        apply_activation_checkpointing(model)
    offload = world_size > 1 and bool(cfg.get("fsdp_cpu_offload", False))
    if world_size > 1:
        _shard(model, cfg, mesh)
    load_full_state_dict(model, weights, torch.device("cpu") if offload else device)
    del weights
    if ep > 1:
        from tunesmith.training.expert_parallel import average_expert_grads

        average_expert_grads(model)
    if cfg.get("compile", False):
        from tunesmith.training.compile import compile_model

        compile_model(model)
    return model, bool(adapter)


def check_weight_shapes(
    model: nn.Module, weights: Mapping[str, torch.Tensor], component: str = "?"
) -> None:
    """One :class:`ConfigError` line when checkpoint tensors do not fit the model's shapes
    (instead of torch's line per tensor): an adapter of another rank names both ranks."""
    own = model.state_dict()
    bad = [
        (k, tuple(v.shape), tuple(own[k].shape))
        for k, v in weights.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if not bad:
        return
    ranks = [(got[0], want[0]) for k, got, want in bad if k.endswith("lora_a.weight")]
    if ranks and all(is_adapter_key(k) for k, _, _ in bad):
        raise ConfigError(
            f"the adapter has LoRA rank {ranks[0][0]} but the model is built with rank "
            f"{ranks[0][1]} (checkpointer.adapter_checkpoint / model.lora_rank): set "
            f"model.lora_rank={ranks[0][0]}, or load an adapter of rank {ranks[0][1]}",
            key="model.lora_rank",
        )
    key, got, want = bad[0]
    raise ConfigError(
        f"{len(bad)} checkpoint tensor(s) do not fit the model, e.g. {key}: {list(got)} in the "
        f"checkpoint, {list(want)} in the model (model._component_={component}) "
        "(checkpointer.checkpoint_dir): pick the model builder that matches the checkpoint",
        key="model._component_",
    )


def _shard(model: nn.Module, cfg: DictConfig, mesh: Any = None) -> None:
    """FSDP2: every transformer layer (decoder, and an encoder's ``layers``) is one unit, and
    each of ``custom_sharded_layers``
    (torchtune's key, e.g. ``['tok_embeddings', 'output']``) that owns parameters; the root
    takes the rest. With a ``mesh`` FSDP2 shards over its data-parallel dims (HSDP when
    ``dp_replicate`` > 1), and not at all when they are 1 (tensor parallelism alone)."""
    from tunesmith.training.distributed import shard_model
    from tunesmith.training.parallel_dims import ParallelDims

    dp_mesh = None if mesh is None else ParallelDims.dp_mesh(mesh)
    if dp_mesh is not None and dp_mesh.size() == 1:
        return

    layer_ids = {id(m) for m in model.layers}
    # an encoder with its own layer list (Qwen2.5-VL's ViT): each of them is a unit too
    layer_ids |= {id(m) for m in getattr(getattr(model, "encoder", None), "layers", ())}
    custom = set(cfg.get("custom_sharded_layers") or [])

    def condition(name: str, module: nn.Module) -> bool:
        owns_params = next(module.parameters(recurse=False), None) is not None
        return id(module) in layer_ids or (name in custom and owns_params)

    from tunesmith.training.expert_parallel import expert_slices

    shard_model(
        model,
        ignored_params=set(expert_slices(model).values()) or None,
        shard_conditions=[condition],
        cpu_offload=bool(cfg.get("fsdp_cpu_offload", False)),
        reshard_after_forward=bool(cfg.get("fsdp_reshard_after_forward", True)),
        dp_mesh=dp_mesh,
    )


# --------------------------------------------------------------------------------------- data
def is_packed(dataset_cfg: DictConfig | ListConfig) -> bool:
    """Whether the dataset node(s) ask for packing; a list must agree."""
    nodes = list(dataset_cfg) if isinstance(dataset_cfg, ListConfig) else [dataset_cfg]
    flags = {bool(node.get("packed", False)) for node in nodes}
    if len(flags) > 1:
        raise ValueError("dataset: mix of packed and unpacked datasets; set packed the same on all")
    return flags.pop()


def build_datasets(dataset_cfg: DictConfig | ListConfig, tokenizer: Any) -> list[Dataset]:
    """Instantiate the dataset node(s) and check them, before any weights load.

    Every tunesmith dataset tokenizes all its rows here (cached on disk) and leaves out the
    rows with no trained token (one warning; an error when none is left), so a bad file,
    row or column fails in seconds, and the sampler only ever sees the kept rows (the same on
    every rank and on resume).
    """
    from tunesmith.data import DataError

    nodes = list(dataset_cfg) if isinstance(dataset_cfg, ListConfig) else [dataset_cfg]
    datasets: list[Dataset] = [instantiate(node, tokenizer) for node in nodes]
    for i, (node, ds) in enumerate(zip(nodes, datasets)):
        drop = getattr(ds, "drop_untrained_rows", None)
        if callable(drop):
            drop()
        if len(ds) == 0:  # type: ignore[arg-type]
            where = f"dataset[{i}]" if len(nodes) > 1 else "dataset"
            raise DataError(
                "the dataset has no samples",
                f"{where}._component_={node.get('_component_')}",
                "point it at data with rows",
                key=where,
            )
    return datasets


def check_vocab(
    datasets: list[Dataset], tokenizer: Any, state: Mapping[str, Any], checkpointer: DictConfig
) -> None:
    """Refuse token ids the checkpoint's embedding (``state["model"]``) has no row for, before
    the model is built (the message names ``checkpointer.checkpoint_dir``)."""
    from tunesmith.datasets._checks import check_token_ids

    weights = state.get("model") or {}
    embedding = next((v for k, v in weights.items() if k.endswith("tok_embeddings.weight")), None)
    vocab = int(embedding.shape[0]) if getattr(embedding, "ndim", 0) == 2 else None
    fusion = next((v for k, v in weights.items() if k.endswith("fusion_embedding.weight")), None)
    if vocab is not None and getattr(fusion, "ndim", 0) == 2:  # <|image|> and kin (fusion)
        vocab += int(fusion.shape[0])
    model = f"checkpointer.checkpoint_dir={checkpointer.get('checkpoint_dir')}"
    check_token_ids(datasets, tokenizer, vocab, model)


def build_dataloader(
    datasets: list[Dataset],
    tokenizer: Any,
    *,
    batch_size: int,
    world_size: int,
    rank: int,
    seed: int,
    ignore_index: int,
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int = 0,
    pin_memory: bool = False,
    packed_mask: bool = True,
) -> tuple[DataLoader, Any]:
    """Datasets from ``build_datasets`` (concatenated) -> resumable distributed sampler ->
    collate (``padded_collate_packed`` for packed datasets, else ``padded_collate_sft``; for
    multimodal datasets ``tokenizer.collate`` where the model transform has one, else their
    tiled-image forms).

    ``packed_mask=False``: packed batches come without the dense ``[b, s, s]`` block-causal
    mask (for a consumer that finds the documents from ``input_pos``, as unpadding does).
    """

    from tunesmith.data import padded_collate_packed, padded_collate_sft
    from tunesmith.data._vision_collate import (
        image_collate,
        padded_collate_packed_tiled_images_and_mask,
    )

    packed = {bool(getattr(ds, "packed", False)) for ds in datasets}
    if len(packed) > 1:
        raise ValueError("dataset: mix of packed and unpacked datasets; set packed the same on all")
    # image + text samples (``encoder_input``): the model transform's own ``collate`` where it
    # has one (Qwen2.5-VL: variable patch counts + M-RoPE ids), else images, tiles and
    # cross-attention masks padded (Llama 3.2 Vision)
    images = any(getattr(ds, "multimodal", False) for ds in datasets)
    pad, pack = padded_collate_sft, padded_collate_packed
    if images:  # (a transform with its own collate but no collate_packed refuses packing)
        pad = image_collate(tokenizer)
        pack = (
            getattr(tokenizer, "collate_packed", None)
            or padded_collate_packed_tiled_images_and_mask
        )
    collate = (
        partial(pack, mask=packed_mask)
        if packed.pop()
        else partial(pad, padding_idx=tokenizer.pad_id, ignore_idx=ignore_index)
    )
    return sampled_loader(
        datasets,
        collate,
        batch_size=batch_size,
        world_size=world_size,
        rank=rank,
        seed=seed,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )


def sampled_loader(
    datasets: list[Dataset],
    collate: Any,
    *,
    batch_size: int,
    world_size: int,
    rank: int,
    seed: int,
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int = 0,
    pin_memory: bool = False,
    unit: str = "samples",
) -> tuple[DataLoader, Any]:
    """Datasets (concatenated) -> resumable distributed sampler -> ``DataLoader(collate)``;
    refuses a batch larger than this rank's share of the data (``unit`` names the rows)."""
    from tunesmith.data import StatefulDistributedSampler

    dataset = datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)
    sampler = StatefulDistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
    )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )
    if len(loader) == 0:
        from tunesmith.config import ConfigError

        raise ConfigError(
            f"batch_size={batch_size} x {world_size} process(es) is larger than the dataset "
            f"({len(dataset)} {unit}): lower batch_size",
            key="batch_size",
        )
    return loader, sampler


def shift_labels(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Labels aligned with tokens ``[b, s]`` -> next-token targets ``[b, s]``."""
    pad = torch.full_like(labels[:, :1], ignore_index)
    return torch.cat([labels[:, 1:], pad], dim=1)


@torch.no_grad()
def validation_loss(
    model: nn.Module,
    loss_fn: nn.Module,
    loader: DataLoader,
    device: torch.device,
    ignore_index: int,
) -> float:
    """Token-weighted mean loss over the whole validation loader (all ranks)."""
    from tunesmith.training.distributed import reduce_metrics

    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device)
    num_tokens = torch.zeros((), device=device, dtype=torch.long)
    for batch in loader:
        batch = batch_to_device(batch, device)
        labels = shift_labels(batch.pop("labels"), ignore_index)
        n = (labels != ignore_index).sum()
        out = model(batch.pop("tokens"), **batch)
        loss_sum += loss_fn(out, labels).float() * n
        num_tokens += n
    reduce_metrics(loss_sum, num_tokens)
    model.train(was_training)
    return float(loss_sum / num_tokens.clamp(min=1))


def fuses_images(model: nn.Module) -> bool:
    """Whether ``model`` is an encoder + decoder fusion model (``DeepFusionModel``): its
    batches carry ``encoder_input`` / ``encoder_mask`` and stay padded ``[b, s]`` rows."""
    from tunesmith.modules.fusion import DeepFusionModel

    return isinstance(model, DeepFusionModel)


def batch_to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Every tensor of a collated batch on ``device``, nested dicts (a vision batch's
    ``encoder_input = {"images", "aspect_ratio", ...}``) included; other values unchanged.
    Asynchronous (pinned, ``non_blocking``) for host tensors bound for CUDA."""
    from tunesmith.recipes._unpad import to_device_async

    def move(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return to_device_async(value, device)
        if isinstance(value, Mapping):
            return {k: move(v) for k, v in value.items()}
        return value

    return {k: move(v) for k, v in batch.items()}


# ------------------------------------------------------------------------------------- saving
def adapter_config(cfg: DictConfig) -> dict[str, Any]:
    """torchtune's adapter_config for the checkpointer (PEFT ``adapter_config.json`` source)."""
    m = cfg.model
    targets = list(m.get("lora_attn_modules", []) or [])
    if m.get("apply_lora_to_mlp", False):
        targets += ["w1", "w2", "w3"]
    if m.get("apply_lora_to_output", False):
        targets.append("output")
    return {
        "r": int(m.get("lora_rank", 8)),
        "lora_alpha": float(m.get("lora_alpha", 16)),
        "target_modules": targets,
        "peft_type": "LORA",
        "use_dora": bool(m.get("use_dora", False)),
    }


def full_state_dicts(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, world_size: int
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Full (unsharded, CPU) model and optimizer state dicts; collective under FSDP2.

    Every rank must call it; only rank 0's result is complete and meant to be saved. NF4
    (QLoRA) weights come out dequantized, one at a time (``gather_cpu_state_dict``).
    """
    from tunesmith.training.distributed import gather_cpu_state_dict, get_world_size_and_rank

    model_sd = gather_cpu_state_dict(model, is_rank_zero=get_world_size_and_rank()[1] == 0)
    if world_size == 1:
        return model_sd, (optimizer.state_dict() if optimizer is not None else None)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    optim_sd = None
    if optimizer is not None:
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        optim_sd = get_optimizer_state_dict(model, optimizer, options=options)
        from tunesmith.training.expert_parallel import gather_expert_optimizer_state

        gather_expert_optimizer_state(model, optimizer, optim_sd)  # every rank (all-gathers)
    return model_sd, optim_sd


def plain_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain Python (for logging it once at the start)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
