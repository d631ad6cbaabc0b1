"""Recipe ``reward_model``: Bradley-Terry training of a scalar reward head on preference pairs,
full or LoRA, on 1 or N devices (FSDP2 with ``tunesmith run --nproc_per_node N``).

The model is a classifier decoder with one output (``tunesmith.modules.classifier_model`` with
``num_classes: 1``, or a family builder such as ``llama2_classifier``); the checkpointer's
``model_type: REWARD`` reads and writes the head as Hugging Face ``score.weight``, and the
saved folder is a ``<Family>ForSequenceClassification`` checkpoint that transformers loads.
Starting from a causal-LM checkpoint, its LM head (or, for tied embeddings, none) is replaced
by a fresh head drawn from the run's seed. With adapters (``lora_*`` / ``apply_lora_to_*``
base builders) the adapters and the head train, the rest stays frozen; the merged HF folder
holds the trained head (the PEFT ``adapter/`` folder holds the LoRA weights only, so load the
merged folder; ``save_adapter_weights_only=True`` is refused).

Each response is scored at its last real token (``sequence_scores``); the loss is
``cfg.loss`` (default ``tunesmith.rlhf.reward_loss.BradleyTerryLoss``, TRL's RewardTrainer
loss). Logged every step (means over the step's pairs, all ranks): ``loss``, ``accuracy``
(chosen scored above rejected), ``margin``, ``rewards/chosen``, ``rewards/rejected``; the
progress bar shows ``acc`` and ``margin``.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from tunesmith.config import ConfigError, instantiate
from tunesmith.modules.classifier import sequence_scores
from tunesmith.recipes._finetune_observe import Observer
from tunesmith.recipes._finetune_setup import (
    build_model,
    check_vocab,
    open_checkpointer,
    start_training,
)
from tunesmith.recipes._optimization import epoch_steps, setup_optimization
from tunesmith.recipes._preference_data import (
    build_preference_dataloader,
    build_preference_datasets,
)
from tunesmith.recipes._run_summary import describe_run
from tunesmith.rlhf.reward_loss import BradleyTerryLoss, reward_metrics
from tunesmith.training.activations import activation_offloading_context
from tunesmith.training.checkpointing._serving import serving_info
from tunesmith.training.checkpointing._signals import GracefulShutdown
from tunesmith.training.distributed import (
    agreed_seed,
    any_rank,
    destroy_distributed,
    reduce_metrics,
)
from tunesmith.training.gradients import clip_and_step
from tunesmith.training.hub_upload import upload_after_training, upload_option
from tunesmith.training.precision import compute_context, loss_scaler, master_dtype
from tunesmith.utils import get_logger

__all__ = ["recipe_main", "METRICS"]

log = get_logger(__name__)

METRICS = ("accuracy", "margin", "rewards/chosen", "rewards/rejected")


def _head_shape(cfg: DictConfig) -> tuple[int, int]:
    """``(num_classes, dim)`` of ``cfg.model``'s output layer, built on the meta device;
    a model without a one-output head, or adapter-only saving (which would leave the trained
    head out), is a one-line error."""
    from tunesmith.modules.peft import get_adapter_params

    component = cfg.model.get("_component_")
    with torch.device("meta"):
        model = instantiate(cfg.model)
    if cfg.get("save_adapter_weights_only", False) and get_adapter_params(model):
        raise ConfigError(
            "save_adapter_weights_only=True: the reward head trains too and is not part of the "
            "adapter, so it would not be saved; set save_adapter_weights_only=False",
            key="save_adapter_weights_only",
        )
    out = getattr(getattr(model, "decoder", model), "output", None)
    weight = getattr(out, "weight", None)
    if weight is None or weight.ndim != 2 or weight.shape[0] != 1:
        got = "none" if weight is None else f"{weight.shape[0]} outputs"
        raise ConfigError(
            f"model._component_={component} has no one-output reward head ({got}); use "
            "tunesmith.modules.classifier_model with num_classes=1 and base_model_path=<builder> "
            "(or a *_classifier builder with num_classes=1)",
            key="model._component_",
        )
    return int(weight.shape[0]), int(weight.shape[1])


def _fresh_head(state: dict[str, Any], shape: tuple[int, int], seed: int) -> bool:
    """Give ``state["model"]`` a new ``output.weight`` ``[1, dim]`` (normal, std ``dim**-0.5``
    / 10, from ``seed``) when the checkpoint has no reward head (a causal LM); True if so."""
    weights = state["model"]
    head = weights.get("output.weight")
    if head is not None and tuple(head.shape) == shape:
        return False
    g = torch.Generator().manual_seed(int(seed))
    dtype = next(iter(weights.values())).dtype if weights else torch.float32
    init = torch.randn(shape, generator=g) * (shape[1] ** -0.5) / 10
    weights["output.weight"] = init.to(dtype)
    return True


def _resumed_head(checkpointer: Any, state: dict[str, Any]) -> None:
    """LoRA resume: the checkpointer gives the frozen base + the adapter, but the trained head
    is in neither; take it from the resumed folder's merged weights."""
    source = getattr(checkpointer, "resumed_from", None)
    if source is None or "adapter" not in state:
        return
    merged = checkpointer._load_weights_from(source)  # native keys, incl. output.weight
    if "output.weight" not in merged:
        raise ConfigError(
            f"cannot resume: {source} holds no merged weights with the trained reward head; "
            "resume from a checkpoint saved with save_adapter_weights_only=False",
            key="resume_from_checkpoint",
        )
    state["model"]["output.weight"] = merged["output.weight"]


def recipe_main(cfg: DictConfig) -> None:
    """Train ``cfg.model``'s reward head on the preference pairs of ``cfg.dataset``."""
    # ---- environment -------------------------------------------------------------------
    device, dtype, world_size, rank = start_training(cfg)  # log, ranges, devices
    upload = upload_option(cfg)  # a run that could not publish stops before it trains
    resume = bool(cfg.get("resume_from_checkpoint", False))
    accum = int(cfg.get("gradient_accumulation_steps", 1))
    max_norm = cfg.get("clip_grad_norm")
    if cfg.get("optimizer_in_bwd", False):
        raise ConfigError(
            "optimizer_in_bwd=True is not supported by the reward_model recipe; set "
            "optimizer_in_bwd=False",
            key="optimizer_in_bwd",
        )
    loss_fn = BradleyTerryLoss() if cfg.get("loss") is None else instantiate(cfg.loss)
    if not isinstance(loss_fn, BradleyTerryLoss):
        raise ConfigError(
            f"loss._component_={cfg.loss.get('_component_')} is not a reward-model loss; the "
            "reward_model recipe needs tunesmith.rlhf.reward_loss.BradleyTerryLoss",
            key="loss._component_",
        )
    model_type = str(cfg.checkpointer.get("model_type", "")).upper()
    if model_type != "REWARD":
        raise ConfigError(
            f"checkpointer.model_type={cfg.checkpointer.get('model_type')}: the reward model's "
            "head is saved as Hugging Face score.weight; set checkpointer.model_type=REWARD",
            key="checkpointer.model_type",
        )
    head_shape = _head_shape(cfg)  # before any weights load

    # ---- output folders, data, weights, model ------------------------------------------
    checkpointer = open_checkpointer(cfg, resume)
    tokenizer = instantiate(cfg.tokenizer)
    checkpointer.serving = serving_info(tokenizer, cfg.tokenizer)  # saved beside weights
    datasets = build_preference_datasets(cfg.dataset, tokenizer, reward=True)
    state = checkpointer.load_checkpoint()
    if resume:
        _resumed_head(checkpointer, state)
    check_vocab(datasets, tokenizer, state, cfg.checkpointer)
    seed = agreed_seed(state.get("seed") if resume else cfg.get("seed"), world_size, device)
    if _fresh_head(state, head_shape, seed) and rank == 0:
        log.info("the checkpoint has no reward head: a new one is initialised from the seed")
    model, is_peft = build_model(cfg, state, device, master_dtype(dtype), world_size)
    head = getattr(model, "decoder", model).output
    head.requires_grad_(True)  # under LoRA: the adapters and the head train
    activations_ctx = compute_context(dtype, device, activation_offloading_context(cfg, model))
    scaler = loss_scaler(dtype, optimizer_in_bwd=False)
    pad_id = getattr(tokenizer, "pad_id", None)

    # ---- data loader, optimizer, schedule ----------------------------------------------
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
        reward=True,
    )
    steps_per_epoch = epoch_steps(cfg, len(loader), accum)
    epochs = int(cfg.get("epochs", 1))
    opt = setup_optimization(
        cfg, model, checkpointer, sampler, state, resume=resume, device=device, rank=rank,
        world_size=world_size, is_peft=is_peft, seed=seed, epochs=epochs, accum=accum,
        total_steps=epochs * steps_per_epoch,
    )  # fmt: skip
    del state
    optimizer, lr_scheduler, save = opt.optimizer, opt.lr_scheduler, opt.save
    epochs_run, global_step = opt.epochs_run, opt.global_step

    # ---- training loop -----------------------------------------------------------------
    observer = Observer(
        cfg, rank=rank, world_size=world_size, device=device,
        total_steps=epochs * steps_per_epoch, initial=global_step,
        summary=describe_run(
            cfg, model=model, loader=loader, checkpointer=checkpointer, device=device,
            dtype=dtype, world_size=world_size, steps_per_epoch=steps_per_epoch, epochs=epochs,
            accum=accum, is_peft=is_peft, resumed_step=global_step if resume else None,
        ),
        curves=("loss", "accuracy"),
    )  # fmt: skip
    save_every = int(cfg.get("save_every_n_steps") or 0)
    log_every = int(cfg.get("log_every_n_steps") or 1)
    model.train()
    # loss sum, METRICS sums, pairs, tokens
    sums = torch.zeros(len(METRICS) + 3, device=device, dtype=torch.float64)
    step_in_epoch = 0
    with GracefulShutdown() as shutdown, observer.profiler() as profiler:
        for epoch in range(epochs_run, epochs):
            sampler.set_epoch(epoch)
            step_in_epoch = max(0, global_step - epoch * steps_per_epoch)
            batches = iter(loader)
            while step_in_epoch < steps_per_epoch:
                for _ in range(accum):
                    tokens, mask = (t.to(device, non_blocking=True) for t in next(batches))
                    with activations_ctx:
                        scores = sequence_scores(model, tokens, mask, pad_id=pad_id)
                    chosen, rejected = scores[:, 0].float().chunk(2)
                    loss = loss_fn(chosen, rejected)
                    (scaler.scale(loss / accum) if scaler else loss / accum).backward()
                    b = chosen.numel()
                    sums += torch.cat([
                        (loss.detach().double() * b).view(1), reward_metrics(chosen, rejected),
                        sums.new_tensor([b, float(mask.sum())]),
                    ])  # fmt: skip
                grad_norm = clip_and_step(model, optimizer, max_norm, scaler)
                optimizer.zero_grad(set_to_none=True)
                if lr_scheduler is not None:
                    lr_scheduler.step()
                global_step += 1
                step_in_epoch += 1
                profiler.step()

                (step_tokens,) = reduce_metrics(sums[-1].clone())
                log_now = global_step % log_every == 0 or step_in_epoch == steps_per_epoch
                metrics: dict[str, float] | None = None
                if log_now:
                    (totals,) = reduce_metrics(sums.clone())
                    pairs = float(totals[-2])
                    values = totals[: len(METRICS) + 1].tolist()
                    metrics = {k: v / pairs for k, v in zip(("loss", *METRICS), values)}
                observer.log_step(
                    global_step,
                    loss=None if metrics is None else metrics["loss"],
                    lr=optimizer.param_groups[0]["lr"],
                    tokens=step_tokens.long(),
                    grad_norm=grad_norm,
                    postfix=None if metrics is None else {
                        "acc": f"{metrics['accuracy']:.3f}", "margin": f"{metrics['margin']:.3f}"
                    },
                )  # fmt: skip
                if metrics is not None and observer.logger is not None:
                    del metrics["loss"]
                    observer.logger.log_dict(metrics, step=global_step)
                sums.zero_()
                stop = any_rank(shutdown.requested, world_size, device)
                mid_epoch = step_in_epoch < steps_per_epoch
                if stop or (save_every and global_step % save_every == 0 and mid_epoch):
                    save(epoch, intermediate=True, global_step=global_step,
                         step_in_epoch=step_in_epoch, step=global_step if mid_epoch else None)  # fmt: skip
                if stop:
                    observer.close()
                    shutdown.exit()
            save(epoch + 1, intermediate=epoch + 1 < epochs, global_step=global_step,
                 step_in_epoch=step_in_epoch)  # fmt: skip
            step_in_epoch = 0
    observer.close()
    if upload is not None and rank == 0:
        upload_after_training(cfg, save.saved, "reward_model", upload)
    destroy_distributed()


if __name__ == "__main__":  # python reward_model.py --config ... (also under torchrun)
    from tunesmith.cli._child import script_main

    raise SystemExit(script_main(recipe_main, "reward_model"))
