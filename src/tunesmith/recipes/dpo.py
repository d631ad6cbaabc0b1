"""Recipe ``dpo``: preference optimization (DPO, RSO, IPO, SimPO), full or LoRA, on 1 or N devices.

The policy trains on pairs of a chosen and a rejected response; the loss compares the policy's
log-probability of each response with a frozen reference model's. The model component decides
the method, as in ``finetune``: with adapters (``lora_*`` builders) only the adapters train and
the reference is the same model with its adapters switched off (no second copy); without, the
reference is a frozen copy of the initial weights, read from ``ref_checkpointer`` (torchtune's
key) or else from ``checkpointer``. torchtune's ``lora_dpo_single_device``,
``lora_dpo_distributed`` and ``full_dpo_distributed`` are aliases, and their configs run
unchanged; launched with ``tunesmith run --nproc_per_node N dpo ...`` the models are sharded
with FSDP2.

A sequence's log-probability is the sum over its trained (non-ignored) label tokens, as in
torchtune (the token mean for losses with ``average_log_probs``, e.g. IPO; reference-free
losses, SimPO, run no reference model). Logged per step:
``loss``, ``rewards/chosen``, ``rewards/rejected``, ``rewards/accuracies``, ``rewards/margins``,
``log_probs/chosen``, ``log_probs/rejected`` (means over the step's pairs, all ranks).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tunesmith.config import ConfigError, instantiate
from tunesmith.config._ranges import check_ranges
from tunesmith.modules.peft import disable_adapter
from tunesmith.recipes import finetune
from tunesmith.recipes._finetune_observe import Observer
from tunesmith.recipes._finetune_setup import (
    build_datasets,
    build_model,
    check_vocab,
    is_packed,
    local_device,
    open_checkpointer,
    sampled_loader,
    shift_labels,
)
from tunesmith.recipes._run_summary import describe_run
from tunesmith.rlhf import sequence_log_probs
from tunesmith.rlhf.loss import PreferenceLoss
from tunesmith.training.checkpointing._signals import GracefulShutdown
from tunesmith.training.distributed import (
    destroy_distributed,
    get_world_size_and_rank,
    init_distributed,
    reduce_metrics,
)
from tunesmith.training.gradients import clip_and_step
from tunesmith.training.precision import compute_context, loss_scaler, master_dtype
from tunesmith.utils import get_device, get_dtype, get_logger, log_runtime, start_run_log

__all__ = ["recipe_main", "build_preference_datasets", "build_preference_dataloader"]

log = get_logger(__name__)

IGNORE_INDEX = -100
PREFERENCE_KEYS = ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels")
METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
           "log_probs/chosen", "log_probs/rejected")  # fmt: skip


def recipe_main(cfg: DictConfig) -> None:
    """Train ``cfg.model`` on the preference pairs of ``cfg.dataset`` with ``cfg.loss``."""
    start_run_log()  # kept in <log folder>/run.log once the observer knows the folder
    check_ranges(cfg)  # every numeric key, named, before anything is built
    # ---- environment -------------------------------------------------------------------
    device = get_device(cfg.get("device"))
    init_distributed(device_type=device.type)
    world_size, rank = get_world_size_and_rank()
    device = local_device(device)
    dtype = get_dtype(cfg.get("dtype"), device)
    log_runtime(device, rank)
    resume = bool(cfg.get("resume_from_checkpoint", False))
    accum = int(cfg.get("gradient_accumulation_steps", 1))
    max_norm = cfg.get("clip_grad_norm")
    if cfg.get("optimizer_in_bwd", False):
        raise ConfigError(
            "optimizer_in_bwd=True is not supported by the dpo recipe; set optimizer_in_bwd=False",
            key="optimizer_in_bwd",
        )
    loss_fn = instantiate(cfg.loss)
    if not isinstance(loss_fn, PreferenceLoss):
        raise ConfigError(
            f"loss._component_={cfg.loss.get('_component_')} is not a preference loss; the dpo "
            "recipe needs one of torchtune.rlhf.loss.DPOLoss, RSOLoss, IPOLoss or SimPOLoss",
            key="loss._component_",
        )

    # ---- output folders, then the data, checked before any weights load -------------
    checkpointer = open_checkpointer(cfg, resume)
    tokenizer = instantiate(cfg.tokenizer)
    datasets = build_preference_datasets(cfg.dataset, tokenizer)

    # ---- weights, seed, models ---------------------------------------------------------
    state = checkpointer.load_checkpoint()
    check_vocab(datasets, tokenizer, state, cfg.checkpointer)
    seed = finetune._agreed_seed(
        state.get("seed") if resume else cfg.get("seed"), world_size, device
    )
    model, is_peft = build_model(cfg, state, device, master_dtype(dtype), world_size)
    reference = None
    reference_free = loss_fn.reference_free  # SimPO: no reference model at all
    if not is_peft and not reference_free:  # full DPO: a frozen copy of the initial weights
        ref_state = state
        if cfg.get("ref_checkpointer") is not None:
            ref_state = instantiate(cfg.ref_checkpointer, resume_from_checkpoint=False)
            ref_state = ref_state.load_checkpoint()
        elif resume:  # `state` holds the resumed policy; the reference is the starting point
            ref_state = instantiate(cfg.checkpointer, resume_from_checkpoint=False)
            ref_state = ref_state.load_checkpoint()
        reference, _ = build_model(cfg, ref_state, device, dtype, world_size)  # frozen
        reference.requires_grad_(False)
        reference.eval()
        del ref_state
    # Under FSDP2 the output layer runs only inside forward; on one process the log-probs are
    # computed from hidden states, projecting only positions that have a target.
    from_hidden = world_size == 1
    for m in (model, reference):
        if m is not None:
            m.skip_output_layer = from_hidden
    # fp16: fp32 policy weights, fp16 autocast compute, dynamic loss scaling
    activations_ctx = compute_context(dtype, device, finetune._activation_offloading(cfg, model))
    scaler = loss_scaler(dtype, optimizer_in_bwd=False)

    # ---- data loader -------------------------------------------------------------------
    loader, sampler = build_preference_dataloader(
        datasets,
        tokenizer,
        batch_size=int(cfg.batch_size),
        world_size=world_size,
        rank=rank,
        seed=seed,
        shuffle=bool(cfg.get("shuffle", True)),
        num_workers=int(cfg.get("num_workers") or 0),
        pin_memory=device.type == "cuda",
    )
    steps_per_epoch = finetune.epoch_steps(cfg, len(loader), accum)
    epochs = int(cfg.get("epochs", 1))

    # ---- optimizer, schedule -----------------------------------------------------------
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = instantiate(
        cfg.optimizer, trainable, **finetune._fused_adam(cfg.optimizer, device, world_size)
    )
    lr_scheduler, epochs_run, global_step = finetune.schedule_and_resume(
        cfg,
        model,
        optimizer,
        sampler,
        state,
        resume=resume,
        world_size=world_size,
        total_steps=epochs * steps_per_epoch,
    )
    del state

    save = finetune.CheckpointSaver(
        cfg,
        checkpointer,
        model,
        optimizer,
        lr_scheduler,
        sampler,
        rank=rank,
        world_size=world_size,
        is_peft=is_peft,
        seed=seed,
        epochs=epochs,
        accum=accum,
    )

    # ---- training loop -----------------------------------------------------------------
    observer = Observer(
        cfg,
        rank=rank,
        world_size=world_size,
        device=device,
        total_steps=epochs * steps_per_epoch,
        initial=global_step,
        summary=describe_run(
            cfg, model=model, loader=loader, checkpointer=checkpointer, device=device,
            dtype=dtype, world_size=world_size, steps_per_epoch=steps_per_epoch, epochs=epochs,
            accum=accum, is_peft=is_peft, resumed_step=global_step if resume else None,
            extra_models={} if reference is None else {"reference": reference},
        ),
    )  # fmt: skip
    save_every = int(cfg.get("save_every_n_steps") or 0)
    log_every = int(cfg.get("log_every_n_steps") or 1)
    average = loss_fn.average_log_probs
    model.train()
    sums = torch.zeros(len(METRICS) + 2, device=device, dtype=torch.float64)  # + pairs, tokens
    step_in_epoch = 0
    with GracefulShutdown() as shutdown, observer.profiler() as profiler:
        for epoch in range(epochs_run, epochs):
            sampler.set_epoch(epoch)
            step_in_epoch = max(0, global_step - epoch * steps_per_epoch)
            batches = iter(loader)
            while step_in_epoch < steps_per_epoch:
                for _ in range(accum):
                    tokens, labels = (t.to(device, non_blocking=True) for t in next(batches))
                    targets = shift_labels(labels, IGNORE_INDEX)
                    with activations_ctx:
                        policy = _pair_log_probs(model, tokens, targets, average)
                    ref: tuple[torch.Tensor, ...] = ()
                    if not reference_free:  # LoRA: the same model with its adapters off
                        ref_model = model if reference is None else reference
                        off = disable_adapter(model) if reference is None else nullcontext()
                        with torch.no_grad(), off, compute_context(dtype, device):
                            ref = _pair_log_probs(ref_model, tokens, targets, average)
                    losses, chosen_r, rejected_r = loss_fn(*policy, *ref)
                    loss = losses.mean() / accum
                    (scaler.scale(loss) if scaler else loss).backward()
                    sums += _step_metrics(losses, chosen_r, rejected_r, policy, targets)
                grad_norm = clip_and_step(model, optimizer, max_norm, scaler)
                optimizer.zero_grad(set_to_none=True)
                if lr_scheduler is not None:
                    lr_scheduler.step()
                global_step += 1
                step_in_epoch += 1
                profiler.step()

                (step_tokens,) = reduce_metrics(sums[-1].clone())  # all ranks, for tokens/s
                log_now = global_step % log_every == 0 or step_in_epoch == steps_per_epoch
                metrics = None
                if log_now:  # the only host syncs of the loop
                    (totals,) = reduce_metrics(sums.clone())
                    pairs = float(totals[-2])
                    metrics = {k: float(v) / pairs for k, v in zip(METRICS, totals.tolist())}
                observer.log_step(
                    global_step,
                    loss=None if metrics is None else metrics["loss"],
                    lr=optimizer.param_groups[0]["lr"],
                    tokens=step_tokens.long(),
                    grad_norm=grad_norm,
                )
                if metrics is not None and observer.logger is not None:
                    del metrics["loss"]  # logged by the observer
                    observer.logger.log_dict(metrics, step=global_step)
                sums.zero_()
                stop = finetune._any_rank(shutdown.requested, world_size, device)
                mid_epoch = step_in_epoch < steps_per_epoch
                if stop or (save_every and global_step % save_every == 0 and mid_epoch):
                    save(
                        epoch,
                        intermediate=True,
                        global_step=global_step,
                        step_in_epoch=step_in_epoch,
                        step=global_step if mid_epoch else None,
                    )
                if stop:
                    observer.close()
                    shutdown.exit()
            save(
                epoch + 1,
                intermediate=epoch + 1 < epochs,
                global_step=global_step,
                step_in_epoch=step_in_epoch,
            )
            step_in_epoch = 0
    observer.close()
    destroy_distributed()


def _pair_log_probs(
    model: nn.Module, tokens: torch.Tensor, targets: torch.Tensor, average: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(chosen [b], rejected [b])`` sequence log-probs of a ``[2b, s]`` batch (chosen rows
    first), summed over the trained targets or, with ``average``, their token mean."""
    out = model(tokens)  # hidden [2b, s, d] with skip_output_layer, else logits [2b, s, vocab]
    project: Callable[[torch.Tensor], torch.Tensor] = (
        partial(_project, model) if getattr(model, "skip_output_layer", False) else _identity
    )
    sums, counts = sequence_log_probs(out, targets, project, IGNORE_INDEX)
    if average:
        sums = sums / counts.clamp(min=1)
    chosen, rejected = sums.chunk(2)
    return chosen, rejected


def _project(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The decoder's output layer and logit soft-cap on ``[n, d]`` hidden states."""
    logits = model.output(hidden)
    cap = getattr(model, "final_logit_softcap", None)
    return logits if cap is None else torch.tanh(logits / cap) * cap


def _identity(logits: torch.Tensor) -> torch.Tensor:
    return logits


def _step_metrics(
    losses: torch.Tensor,
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    policy: tuple[torch.Tensor, torch.Tensor],
    targets: torch.Tensor,
) -> torch.Tensor:
    """Sums over a micro-batch's pairs, in ``METRICS`` order, then pairs and trained tokens."""
    margins = chosen_rewards - rejected_rewards
    parts = [losses.detach(), chosen_rewards, rejected_rewards, (margins > 0).double(), margins,
             policy[0].detach(), policy[1].detach()]  # fmt: skip
    values = [p.double().sum() for p in parts]
    values += [losses.new_tensor(losses.numel(), dtype=torch.float64)]
    values += [(targets != IGNORE_INDEX).sum().double()]
    return torch.stack(values)


def build_preference_datasets(
    dataset_cfg: DictConfig | ListConfig, tokenizer: Any
) -> list[Dataset]:
    """Preference dataset(s), checked before any weights load (see ``build_datasets``: every
    pair is tokenized once and pairs with an untrained side are left out).

    The first sample is read up front, so a dataset of the wrong kind fails before training,
    naming the component.
    """
    if is_packed(dataset_cfg):
        raise ConfigError(
            "dataset.packed=True: preference pairs cannot be packed; set dataset.packed=False",
            key="dataset.packed",
        )
    nodes = list(dataset_cfg) if isinstance(dataset_cfg, ListConfig) else [dataset_cfg]
    datasets = build_datasets(dataset_cfg, tokenizer)
    for node, ds in zip(nodes, datasets):
        sample = ds[0]
        missing = [k for k in PREFERENCE_KEYS if k not in sample]
        if missing:
            raise ConfigError(
                f"dataset._component_={node.get('_component_')} gives samples with keys "
                f"{sorted(sample)}, not preference pairs (missing {missing}); the dpo recipe "
                "needs a preference dataset such as torchtune.datasets.preference_dataset or "
                "stack_exchange_paired_dataset",
                key="dataset._component_",
            )
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
) -> tuple[DataLoader, Any]:
    """Preference datasets (from ``build_preference_datasets``) -> resumable distributed
    sampler -> ``padded_collate_dpo``.

    Batches are ``(input_ids [2b, s], labels [2b, s])``: rows ``:b`` chosen, ``b:`` rejected.
    """
    from tunesmith.data import padded_collate_dpo

    pad_id = getattr(tokenizer, "pad_id", None)
    collate = partial(
        padded_collate_dpo, padding_idx=0 if pad_id is None else pad_id, ignore_idx=IGNORE_INDEX
    )
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
        unit="pairs",
    )


if __name__ == "__main__":  # python dpo.py --config ... (also under torchrun)
    from tunesmith.cli._child import script_main

    raise SystemExit(script_main(recipe_main, "dpo"))
