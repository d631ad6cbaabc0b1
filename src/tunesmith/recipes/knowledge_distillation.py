"""Recipe ``knowledge_distillation``: a student learns from labels and from a frozen teacher.

The student is ``cfg.model`` loaded by ``cfg.checkpointer`` (full or LoRA, decided by the
builder as in ``finetune``); the teacher is ``cfg.teacher_model`` loaded by
``cfg.teacher_checkpointer`` and never trains. For every micro-batch both see the same
tokens, and

    loss = (1 - kd_ratio) * CE(student, labels) + kd_ratio * KD(student, teacher)

where ``cfg.loss`` is the cross-entropy (e.g. ``CEWithChunkedOutputLoss``) and
``cfg.kd_loss`` the distillation loss (``ForwardKLLoss`` / ``ForwardKLWithChunkedOutputLoss``),
both means over the same non-ignored labels. Gradient accumulation weights each micro-batch by
its share of the step's trained tokens (as ``finetune`` does), so the step's loss is the token
mean over the whole step. torchtune's ``knowledge_distillation_single_device`` and
``knowledge_distillation_distributed`` are aliases and their configs' keys are read unchanged;
the recipe runs in one process (``world_size > 1`` is refused).

Logged per step: ``loss``, ``class_loss``, ``kd_loss``, ``lr``, ``tokens_per_second`` (+
``grad_norm`` with ``clip_grad_norm``). Saved like ``finetune``: weights in the student
checkpoint's format, a PEFT adapter for LoRA students, recipe state for exact resume.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from tunesmith.config import ConfigError, instantiate, parse_recipe_args
from tunesmith.modules.kd_loss import KDLoss
from tunesmith.modules.peft import is_adapter_key
from tunesmith.recipes import finetune
from tunesmith.recipes._finetune_observe import Observer
from tunesmith.recipes._finetune_setup import (
    adapter_config,
    build_dataloader,
    build_model,
    full_state_dicts,
)
from tunesmith.training.checkpointing._recipe_state import build_recipe_state, restore_recipe_state
from tunesmith.training.checkpointing._signals import GracefulShutdown
from tunesmith.training.distributed import get_world_size_and_rank
from tunesmith.training.gradients import clip_grad_norm, count_trainable_tokens
from tunesmith.utils import get_device, get_dtype, get_logger

__all__ = ["recipe_main", "build_teacher", "kd_step_losses"]

log = get_logger(__name__)

METRICS = ("loss", "class_loss", "kd_loss")


def recipe_main(cfg: DictConfig) -> None:
    """Distil ``cfg.teacher_model`` into ``cfg.model`` on ``cfg.dataset``."""
    # ---- environment and losses --------------------------------------------------------
    world_size, rank = get_world_size_and_rank()
    if world_size > 1:
        raise ConfigError(
            f"the knowledge_distillation recipe runs in one process, not {world_size}: launch "
            "it without --nproc_per_node / torchrun",
            key="knowledge_distillation",
        )
    device = get_device(cfg.get("device"))
    dtype = get_dtype(cfg.get("dtype"), device)
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
    ignore_index = int(getattr(loss_fn, "ignore_index", -100))

    # ---- weights, seed, models ---------------------------------------------------------
    ckpt_kwargs: dict[str, Any] = {"resume_from_checkpoint": resume}
    if cfg.get("keep_last_n_checkpoints") and "keep_last_n_checkpoints" not in cfg.checkpointer:
        ckpt_kwargs["keep_last_n_checkpoints"] = cfg.keep_last_n_checkpoints
    checkpointer = instantiate(cfg.checkpointer, **ckpt_kwargs)
    state = checkpointer.load_checkpoint()
    seed = finetune._agreed_seed(state.get("seed") if resume else cfg.get("seed"), 1, device)
    model, is_peft = build_model(cfg, state, device, dtype, 1)
    teacher = build_teacher(cfg, device, dtype)
    _check_vocab(model, teacher)
    chunks = int(getattr(kd_loss_fn, "num_output_chunks", 0) or 0)
    for m in (model, teacher):
        m.set_num_output_chunks(chunks)
    activations_ctx = finetune._activation_offloading(cfg, model)

    # ---- data --------------------------------------------------------------------------
    tokenizer = instantiate(cfg.tokenizer)
    loader, sampler = build_dataloader(
        cfg.dataset,
        tokenizer,
        batch_size=int(cfg.batch_size),
        world_size=1,
        rank=0,
        seed=seed,
        ignore_index=ignore_index,
        shuffle=bool(cfg.get("shuffle", True)),
        num_workers=int(cfg.get("num_workers") or 0),
        pin_memory=device.type == "cuda",
    )
    steps_per_epoch = len(loader) // accum
    if cfg.get("max_steps_per_epoch"):
        steps_per_epoch = min(steps_per_epoch, int(cfg.max_steps_per_epoch))
    if steps_per_epoch == 0:
        raise ValueError(
            f"gradient_accumulation_steps={accum} is larger than the {len(loader)} batches of an "
            "epoch: lower gradient_accumulation_steps or batch_size"
        )
    epochs = int(cfg.get("epochs", 1))

    # ---- optimizer, schedule -----------------------------------------------------------
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = instantiate(
        cfg.optimizer, trainable, **finetune._fused_adam(cfg.optimizer, device, 1)
    )
    lr_scheduler = None
    if cfg.get("lr_scheduler") is not None:
        lr_scheduler = instantiate(
            cfg.lr_scheduler, optimizer, num_training_steps=epochs * steps_per_epoch
        )
    epochs_run, global_step = 0, 0
    if resume:
        epochs_run, global_step = restore_recipe_state(
            state, optimizer=optimizer, lr_scheduler=lr_scheduler, sampler=sampler
        )
    del state

    def save(epoch: int, intermediate: bool, step: int | None = None) -> None:
        """Weights (+ PEFT adapter) and, for ``intermediate``, the recipe state."""
        model_sd, optim_sd = full_state_dicts(model, optimizer if intermediate else None, 1)
        to_save: dict[str, Any] = {"model": model_sd}
        if is_peft:
            to_save["adapter_config"] = adapter_config(cfg)
            to_save["adapter"] = {k: v for k, v in model_sd.items() if is_adapter_key(k)}
        if intermediate:
            consumed = step_in_epoch * accum * int(cfg.batch_size)
            to_save.update(
                build_recipe_state(
                    epochs_run=epoch,
                    steps_run=global_step,
                    lr_scheduler=lr_scheduler,
                    sampler=finetune._SamplerAt(sampler, consumed),
                    seed=seed,
                    total_epochs=epochs,
                    max_steps_per_epoch=cfg.get("max_steps_per_epoch"),
                )
            )
            to_save["optimizer"] = optim_sd
        checkpointer.save_checkpoint(
            to_save,
            epoch=epoch,
            intermediate_checkpoint=intermediate,
            adapter_only=bool(cfg.get("save_adapter_weights_only", False)) and is_peft,
            step=step,
        )

    # ---- training loop -----------------------------------------------------------------
    observer = Observer(
        cfg, rank=0, world_size=1, device=device, total_steps=epochs * steps_per_epoch,
        initial=global_step,
    )  # fmt: skip
    save_every = int(cfg.get("save_every_n_steps") or 0)
    log_every = int(cfg.get("log_every_n_steps") or 1)
    model.train()
    sums = torch.zeros(len(METRICS), device=device, dtype=torch.float64)
    step_in_epoch = 0
    with GracefulShutdown() as shutdown, observer.profiler() as profiler:
        for epoch in range(epochs_run, epochs):
            sampler.set_epoch(epoch)
            step_in_epoch = max(0, global_step - epoch * steps_per_epoch)
            batches = iter(loader)
            while step_in_epoch < steps_per_epoch:
                # token-weighted accumulation, as in finetune: each micro-batch's mean losses
                # are weighted by its share n / total of the step's trained tokens
                micro = [
                    finetune._to_device(next(batches), device, ignore_index) for _ in range(accum)
                ]
                counts = [count_trainable_tokens(labels, ignore_index) for _, labels in micro]
                total_tokens = torch.stack(counts).sum()
                for (batch, labels), n in zip(micro, counts):
                    weight = n / total_tokens.clamp(min=1)
                    with activations_ctx:
                        losses = kd_step_losses(
                            model, teacher, batch, labels, loss_fn, kd_loss_fn, kd_ratio
                        )
                    (losses[0] * weight).backward()
                    sums += torch.stack([x.detach().double() for x in losses]) * weight
                    del losses
                del micro
                grad_norm = None
                if max_norm:
                    grad_norm = clip_grad_norm(model.parameters(), float(max_norm))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if lr_scheduler is not None:
                    lr_scheduler.step()
                global_step += 1
                step_in_epoch += 1
                profiler.step()

                log_now = global_step % log_every == 0 or step_in_epoch == steps_per_epoch
                values = dict(zip(METRICS, sums.tolist())) if log_now else None
                observer.log_step(
                    global_step,
                    loss=None if values is None else values.pop("loss"),
                    lr=optimizer.param_groups[0]["lr"],
                    tokens=total_tokens,
                    grad_norm=grad_norm,
                )
                if values is not None and observer.logger is not None:
                    observer.logger.log_dict(values, step=global_step)
                sums.zero_()
                stop = shutdown.requested
                mid_epoch = step_in_epoch < steps_per_epoch
                if stop or (save_every and global_step % save_every == 0 and mid_epoch):
                    save(epoch, intermediate=True, step=global_step if mid_epoch else None)
                if stop:
                    observer.close()
                    shutdown.exit()
            save(epoch + 1, intermediate=epoch + 1 < epochs)
            step_in_epoch = 0
    observer.close()


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


def build_teacher(cfg: DictConfig, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """``cfg.teacher_model`` with ``cfg.teacher_checkpointer``'s weights, frozen, in eval mode."""
    teacher_ckpt = instantiate(cfg.teacher_checkpointer, resume_from_checkpoint=False)
    teacher_state = teacher_ckpt.load_checkpoint()
    sub = OmegaConf.create({"model": cfg.teacher_model, "compile": cfg.get("compile", False)})
    try:
        teacher, has_adapters = build_model(sub, teacher_state, device, dtype, 1)
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
            "use torchtune.modules.loss.ForwardKLWithChunkedOutputLoss or ForwardKLLoss",
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


if __name__ == "__main__":
    recipe_main(parse_recipe_args())
