"""Recipe ``knowledge_distillation``: a student learns from labels and from a frozen teacher.

The student is ``cfg.model`` loaded by ``cfg.checkpointer`` (full or LoRA, decided by the
builder as in ``finetune``); the teacher is ``cfg.teacher_model`` loaded by
``cfg.teacher_checkpointer`` and never trains. For every micro-batch both see the same
tokens, and

    loss = (1 - kd_ratio) * CE(student, labels) + kd_ratio * KD(student, teacher)

where ``cfg.loss`` is the cross-entropy (e.g. ``CEWithChunkedOutputLoss``) and
``cfg.kd_loss`` the distillation loss (forward / reverse / symmetric KL, plain or chunked),
both means over the same non-ignored labels. Gradient accumulation weights each micro-batch by
its share of the step's trained tokens (as ``finetune`` does), so the step's loss is the token
mean over the whole step (all ranks). torchtune's ``knowledge_distillation_single_device`` and
``knowledge_distillation_distributed`` are aliases and their configs' keys are read unchanged;
launched with ``tunesmith run --nproc_per_node N knowledge_distillation ...`` the student and
the teacher are both sharded with FSDP2.

Logged per step: ``loss``, ``class_loss``, ``kd_loss``, ``lr``, ``tokens_per_second`` (+
``grad_norm`` with ``clip_grad_norm``). Saved like ``finetune``: weights in the student
checkpoint's format, a PEFT adapter for LoRA students, recipe state for exact resume.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from tunesmith.config import ConfigError, instantiate
from tunesmith.modules.kd_loss import KDLoss
from tunesmith.recipes._finetune_observe import Observer
from tunesmith.recipes._finetune_setup import (
    build_dataloader,
    build_datasets,
    build_model,
    check_vocab,
    start_training,
)
from tunesmith.recipes._optimization import epoch_steps, setup_optimization
from tunesmith.recipes._parallel_setup import check_model_for_tp, parallel_layout
from tunesmith.recipes._run_summary import describe_run
from tunesmith.recipes._sharded_saves import open_checkpointers
from tunesmith.recipes._unpad import batch_inputs
from tunesmith.training.activations import activation_offloading_context
from tunesmith.training.checkpointing._serving import serving_info
from tunesmith.training.checkpointing._signals import GracefulShutdown
from tunesmith.training.distributed import (
    agreed_seed,
    any_rank,
    destroy_distributed,
    reduce_metrics,
)
from tunesmith.training.gradients import clip_and_step, count_trainable_tokens
from tunesmith.training.hub_upload import upload_after_training, upload_option
from tunesmith.training.precision import compute_context, loss_scaler, master_dtype
from tunesmith.utils import get_logger

__all__ = ["recipe_main", "build_teacher", "kd_step_losses"]

log = get_logger(__name__)

METRICS = ("loss", "class_loss", "kd_loss")


def recipe_main(cfg: DictConfig) -> None:
    """Distil ``cfg.teacher_model`` into ``cfg.model`` on ``cfg.dataset``."""
    # ---- environment and losses --------------------------------------------------------
    device, dtype, world_size, rank = start_training(cfg)  # log, ranges, devices
    upload = upload_option(cfg)  # a run that could not publish stops before it trains
    resume = bool(cfg.get("resume_from_checkpoint", False))
    accum = int(cfg.get("gradient_accumulation_steps", 1))
    max_norm = cfg.get("clip_grad_norm")
    kd_ratio = float(cfg.get("kd_ratio", 0.5))
    if not 0.0 <= kd_ratio <= 1.0:
        raise ConfigError(f"kd_ratio={kd_ratio} must lie in [0, 1]", key="kd_ratio")
    if cfg.get("optimizer_in_bwd", False):
        raise ConfigError(
            "optimizer_in_bwd=True is not supported by knowledge_distillation; set it to False",
            key="optimizer_in_bwd",
        )
    for key in ("teacher_model", "teacher_checkpointer", "kd_loss"):
        if cfg.get(key) is None:
            raise ConfigError(f"{key} is missing: knowledge distillation needs it", key=key)
    loss_fn, kd_loss_fn = _build_losses(cfg)
    dims, mesh = parallel_layout(cfg, world_size, device)  # FSDP2 / HSDP x tensor parallel
    if dims.tp > 1:  # the teacher is split the same way: its heads must divide too
        check_model_for_tp(cfg.teacher_model, dims.tp, key="teacher_model")
    ignore_index = int(getattr(loss_fn, "ignore_index", -100))

    # ---- output folders, then the data, checked before any weights load -------------
    checkpointer, sharded = open_checkpointers(cfg, resume)  # + DCP saves from every rank
    tokenizer = instantiate(cfg.tokenizer)
    checkpointer.serving = serving_info(tokenizer, cfg.tokenizer)  # saved beside weights
    datasets = build_datasets(cfg.dataset, tokenizer)

    # ---- weights, seed, models ---------------------------------------------------------
    state = checkpointer.load_checkpoint()
    if resume and sharded is not None:  # base weights + the DCP folder's recipe state
        state.update(sharded.recipe_state())
    check_vocab(datasets, tokenizer, state, cfg.checkpointer)
    seed = agreed_seed(state.get("seed") if resume else cfg.get("seed"), world_size, device)
    model, is_peft = build_model(cfg, state, device, master_dtype(dtype), world_size, mesh)
    teacher = build_teacher(cfg, device, dtype, world_size, mesh)  # frozen: fp16 is fine
    _check_vocab(model, teacher)
    chunks = int(getattr(kd_loss_fn, "num_output_chunks", 0) or 0)
    for m in (model, teacher):
        m.set_num_output_chunks(chunks)
    # fp16: fp32 student weights, fp16 autocast compute, dynamic loss scaling
    activations_ctx = compute_context(dtype, device, activation_offloading_context(cfg, model))
    scaler = loss_scaler(dtype, optimizer_in_bwd=False)

    # ---- data loader -------------------------------------------------------------------
    loader, sampler = build_dataloader(
        datasets,
        tokenizer,
        batch_size=int(cfg.batch_size),
        world_size=dims.dp_size,  # the ranks of one tensor-parallel group read the same batch
        rank=dims.dp_rank(mesh),
        seed=seed,
        ignore_index=ignore_index,
        shuffle=bool(cfg.get("shuffle", True)),
        num_workers=int(cfg.get("num_workers") or 0),
        pin_memory=device.type == "cuda",
    )
    steps_per_epoch = epoch_steps(cfg, len(loader), accum)
    epochs = int(cfg.get("epochs", 1))

    # ---- optimizer, schedule -----------------------------------------------------------
    opt = setup_optimization(
        cfg, model, checkpointer, sampler, state, resume=resume, device=device, rank=rank,
        world_size=world_size, is_peft=is_peft, seed=seed, epochs=epochs, accum=accum,
        total_steps=epochs * steps_per_epoch, sharded=sharded,
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
            extra_models={"teacher": teacher},
        ),
    )  # fmt: skip
    save_every = int(cfg.get("save_every_n_steps") or 0)
    log_every = int(cfg.get("log_every_n_steps") or 1)
    model.train()
    sums = torch.zeros(len(METRICS), device=device, dtype=torch.float64)  # token-weighted
    step_in_epoch = 0
    with GracefulShutdown() as shutdown, observer.profiler() as profiler:
        for epoch in range(epochs_run, epochs):
            sampler.set_epoch(epoch)
            step_in_epoch = max(0, global_step - epoch * steps_per_epoch)
            batches = iter(loader)
            while step_in_epoch < steps_per_epoch:
                # token-weighted accumulation, as in finetune: each micro-batch's mean losses
                # are weighted by its share n / total of the step's trained tokens (all ranks)
                micro = [batch_inputs(next(batches), device, ignore_index) for _ in range(accum)]
                counts = [count_trainable_tokens(labels, ignore_index) for _, labels in micro]
                (total_tokens,) = reduce_metrics(torch.stack(counts).sum())
                weight = world_size / total_tokens.clamp(min=1)  # FSDP2 averages over ranks
                for (batch, labels), n in zip(micro, counts):
                    with activations_ctx:
                        losses = kd_step_losses(
                            model, teacher, batch, labels, loss_fn, kd_loss_fn, kd_ratio
                        )
                    scaled = losses[0] * (n * weight)
                    (scaler.scale(scaled) if scaler else scaled).backward()
                    sums += torch.stack([x.detach().double() for x in losses]) * n
                    del losses
                del micro
                grad_norm = clip_and_step(model, optimizer, max_norm, scaler)
                optimizer.zero_grad(set_to_none=True)
                if lr_scheduler is not None:
                    lr_scheduler.step()
                global_step += 1
                step_in_epoch += 1
                profiler.step()
                save.poll()  # publishes a finished async save

                log_now = global_step % log_every == 0 or step_in_epoch == steps_per_epoch
                values = None
                if log_now:  # the only host syncs of the loop
                    (totals,) = reduce_metrics(sums.clone())
                    totals = totals / total_tokens.clamp(min=1)
                    values = dict(zip(METRICS, totals.tolist()))
                observer.log_step(
                    global_step,
                    loss=None if values is None else values.pop("loss"),
                    lr=optimizer.param_groups[0]["lr"],
                    tokens=total_tokens // dims.tp,  # each tp rank counted the same batch
                    grad_norm=grad_norm,
                )
                if values is not None and observer.logger is not None:
                    observer.logger.log_dict(values, step=global_step)
                sums.zero_()
                stop = any_rank(shutdown.requested, world_size, device)
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
    if upload is not None and rank == 0:
        upload_after_training(cfg, save.saved, "knowledge_distillation", upload)
    destroy_distributed()


def kd_step_losses(
    model: nn.Module,
    teacher: nn.Module,
    batch: dict[str, Any],
    labels: torch.Tensor,
    loss_fn: nn.Module,
    kd_loss_fn: nn.Module,
    kd_ratio: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, class_loss, kd_loss)`` of one micro-batch, each a scalar token mean.

    ``batch``: ``{"tokens": [b, s], ...}`` (``mask`` / ``input_pos`` when packed); ``labels``:
    next-token targets ``[b, s]``. Both models return logits ``[b, s, vocab]`` or a list of
    chunks of it; the teacher runs without a graph.
    """
    inputs = dict(batch)
    tokens = inputs.pop("tokens")
    with torch.no_grad():
        teacher_logits = teacher(tokens, **inputs)
    logits = model(tokens, **inputs)
    class_loss = loss_fn(_for_loss(logits, loss_fn), labels)
    kd_loss = kd_loss_fn(
        _for_loss(logits, kd_loss_fn), _for_loss(teacher_logits, kd_loss_fn), labels
    )
    loss = (1.0 - kd_ratio) * class_loss + kd_ratio * kd_loss
    return loss, class_loss, kd_loss


def _for_loss(
    logits: torch.Tensor | list[torch.Tensor], loss: nn.Module
) -> torch.Tensor | list[torch.Tensor]:
    """Chunked losses take the chunk list; plain ones one ``[b, s, vocab]`` tensor."""
    if getattr(loss, "num_output_chunks", None):
        return logits
    return logits if isinstance(logits, torch.Tensor) else torch.cat(list(logits), dim=1)


def build_teacher(
    cfg: DictConfig,
    device: torch.device,
    dtype: torch.dtype,
    world_size: int = 1,
    mesh: Any = None,
) -> nn.Module:
    """``cfg.teacher_model`` with ``cfg.teacher_checkpointer``'s weights, frozen, in eval mode,
    built on the meta device and laid out as the student (``mesh``: tensor parallel with
    ``cfg.tensor_parallel_plan`` x FSDP2; FSDP2 alone when ``world_size > 1``)."""
    teacher_ckpt = instantiate(cfg.teacher_checkpointer, resume_from_checkpoint=False)
    teacher_state = teacher_ckpt.load_checkpoint()
    sub = OmegaConf.create({"model": cfg.teacher_model, "compile": cfg.get("compile", False)})
    if cfg.get("tensor_parallel_plan") is not None:
        sub.tensor_parallel_plan = cfg.tensor_parallel_plan
    try:
        teacher, has_adapters = build_model(sub, teacher_state, device, dtype, world_size, mesh)
    except ValueError as err:
        raise ConfigError(
            f"teacher_model / teacher_checkpointer: {err}", key="teacher_checkpointer"
        ) from err
    if has_adapters:
        raise ConfigError(
            f"teacher_model._component_={cfg.teacher_model.get('_component_')} builds adapters; "
            "the teacher is frozen, so give it a plain builder (e.g. qwen2_1_5b, not lora_...)",
            key="teacher_model._component_",
        )
    teacher.requires_grad_(False)
    teacher.eval()
    return teacher


def _build_losses(cfg: DictConfig) -> tuple[nn.Module, KDLoss]:
    loss_fn = instantiate(cfg.loss)
    if hasattr(loss_fn, "set_model_output"):
        raise ConfigError(
            f"loss._component_={cfg.loss.get('_component_')} projects hidden states itself, "
            "but distillation compares the student's logits with the teacher's: use "
            "torchtune.modules.loss.CEWithChunkedOutputLoss",
            key="loss._component_",
        )
    kd_loss_fn = instantiate(cfg.kd_loss)
    if not isinstance(kd_loss_fn, KDLoss):
        raise ConfigError(
            f"kd_loss._component_={cfg.kd_loss.get('_component_')} is not a distillation loss; "
            "use one of torchtune.modules.loss.{ForwardKL,ReverseKL,SymmetricKL}Loss or their "
            "...WithChunkedOutputLoss forms",
            key="kd_loss._component_",
        )
    return loss_fn, kd_loss_fn


def _check_vocab(model: nn.Module, teacher: nn.Module) -> None:
    student_vocab = model.tok_embeddings.weight.shape[0]
    teacher_vocab = teacher.tok_embeddings.weight.shape[0]
    if student_vocab != teacher_vocab:
        raise ConfigError(
            f"teacher_model has a vocabulary of {teacher_vocab} tokens but model has "
            f"{student_vocab}: distillation compares token distributions, so the teacher and "
            "the student must share a tokenizer; pick a teacher of the student's family",
            key="teacher_model",
        )


if __name__ == "__main__":  # python knowledge_distillation.py --config ... (also under torchrun)
    from tunesmith.cli._child import script_main

    raise SystemExit(script_main(recipe_main, "knowledge_distillation"))
