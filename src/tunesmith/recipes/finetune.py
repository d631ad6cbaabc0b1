"""Recipe ``finetune``: supervised finetuning — full, LoRA, DoRA or QLoRA, one device or many.

The model component decides the method: a builder with adapters (``lora_*``, ``qlora_*``,
``use_dora``) trains only the adapters; a plain builder trains everything. Launched with
``tunesmith run --nproc_per_node N finetune ...`` the same script shards the model with FSDP2.
torchtune's recipe names (``full_finetune_single_device``, ``lora_finetune_distributed``, ...)
are aliases of this one, and its config keys are read unchanged.

The loop reads top to bottom: set up, then for every optimizer step run
``gradient_accumulation_steps`` micro-batches, normalise the summed gradient by the number of
trained tokens in the whole (global) batch, clip, step, log, save.
"""

from __future__ import annotations

import inspect

import torch
from omegaconf import DictConfig, OmegaConf

from tunesmith.config import instantiate
from tunesmith.recipes._checkpoint_saver import _SamplerAt  # noqa: F401
from tunesmith.recipes._finetune_observe import Observer
from tunesmith.recipes._finetune_setup import (
    build_dataloader,
    build_datasets,
    build_model,
    check_vocab,
    fuses_images,
    start_training,
    validation_loss,
)
from tunesmith.recipes._optimization import epoch_steps, fused_adam, setup_optimization
from tunesmith.recipes._parallel_setup import (
    context_parallel_request,
    expert_parallel_degree,
    parallel_layout,
)
from tunesmith.recipes._run_summary import describe_run
from tunesmith.recipes._sharded_saves import open_checkpointers
from tunesmith.recipes._training_data import loader_setting, training_datasets
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
from tunesmith.training.router_loss import RouterLoss, add_router_loss
from tunesmith.utils import get_logger

__all__ = ["recipe_main"]

log = get_logger(__name__)


def recipe_main(cfg: DictConfig) -> None:
    """Finetune ``cfg.model`` on ``cfg.dataset`` and save in the checkpoint's own format."""
    # ---- environment -------------------------------------------------------------------
    device, dtype, world_size, rank = start_training(cfg)  # log, ranges, devices
    upload = upload_option(cfg)  # a run that could not publish stops before it trains
    # FSDP2 / HSDP x context x tensor
    dims, mesh = parallel_layout(cfg, world_size, device, context_parallel=True)
    resume = bool(cfg.get("resume_from_checkpoint", False))
    accum = int(cfg.get("gradient_accumulation_steps", 1))
    max_norm = cfg.get("clip_grad_norm")
    in_bwd = bool(cfg.get("optimizer_in_bwd", False))
    if in_bwd and (accum > 1 or max_norm):
        raise ValueError(
            "optimizer_in_bwd=True steps each parameter inside backward, so it cannot combine "
            f"with gradient_accumulation_steps={accum} or clip_grad_norm={max_norm}; set "
            "gradient_accumulation_steps=1 and clip_grad_norm=null, or optimizer_in_bwd=False"
        )

    # ---- output folders, then the data, checked before any weights load -------------
    checkpointer, sharded = open_checkpointers(cfg, resume)  # + DCP saves from every rank
    tokenizer = instantiate(cfg.tokenizer)
    checkpointer.serving = serving_info(tokenizer, cfg.tokenizer)  # saved beside weights
    datasets = training_datasets(cfg, tokenizer)  # dataset, or a weighted mix
    val_every = int(cfg.get("run_val_every_n_steps") or 0)
    val_datasets = None
    if val_every and cfg.get("dataset_val") is not None:  # torchtune's validation keys
        val_datasets = build_datasets(cfg.dataset_val, tokenizer)

    # ---- weights, seed, model ----------------------------------------------------------
    state = checkpointer.load_checkpoint()
    if resume and sharded is not None:  # base weights + the DCP folder's recipe state
        state.update(sharded.recipe_state())
    check_vocab(datasets + (val_datasets or []), tokenizer, state, cfg.checkpointer)
    seed = agreed_seed(state.get("seed") if resume else cfg.get("seed"), world_size, device)
    model, is_peft = build_model(
        cfg,
        state,
        device,
        master_dtype(dtype),
        world_size,
        mesh,
        expert_parallel=expert_parallel_degree(cfg),  # checked by parallel_layout
    )
    loss_fn = instantiate(cfg.loss)
    router_loss = RouterLoss.from_config(cfg, model)  # MoE: load balancing / z-loss
    ignore_index = int(getattr(loss_fn, "ignore_index", -100))
    if hasattr(loss_fn, "set_model_output"):  # the loss projects hidden states itself
        loss_fn.set_model_output(model)
    elif hasattr(loss_fn, "num_output_chunks"):  # CEWithChunkedOutputLoss takes logit chunks
        model.set_num_output_chunks(loss_fn.num_output_chunks)
    cp = None  # context parallel: each rank of a cp group holds 1/cp of every sequence
    if dims.cp > 1:
        from tunesmith.training.context_parallel import (
            ContextParallel,
            context_parallel_method,
            enable_context_parallel,
        )

        # (checked by parallel_layout; the heads here are already split by tensor parallelism)
        method = context_parallel_method(context_parallel_request(cfg), model, dims.cp)
        cp = ContextParallel.from_mesh(mesh, ignore_index, method)
        enable_context_parallel(model, cp)
        if rank == 0:
            log.info(
                "context parallel: every sequence is split over %d ranks (%s)", dims.cp, method
            )
    if cfg.get("compile", False):
        from tunesmith.training.compile import compile_loss

        compile_loss(loss_fn)
    # fp16: fp32 parameters, fp16 autocast compute, dynamic loss scaling; else plain
    activations_ctx = compute_context(dtype, device, activation_offloading_context(cfg, model))
    scaler = loss_scaler(dtype, in_bwd)

    # ---- data loaders ------------------------------------------------------------------
    # drop padding from the micro-batches where the decoder takes document lengths; packs
    # then need no dense [b, s, s] mask from the collate (the documents come from input_pos)
    # (not for fusion models: their cross-attention masks are per padded row)
    # (nor under context parallelism: it shards padded rows and their masks)
    unpad = "seq_lens" in inspect.signature(model.forward).parameters and not fuses_images(model)
    unpad = unpad and cp is None
    data_kwargs = {  # the ranks of one tensor- or context-parallel group read the same batch
        "world_size": dims.dp_size,
        "rank": dims.dp_rank(mesh),
        "seed": seed,
        "ignore_index": ignore_index,
        "pin_memory": device.type == "cuda",  # lets .to(device, non_blocking=True) overlap
    }
    loader, sampler = build_dataloader(
        datasets,
        tokenizer,
        batch_size=int(cfg.batch_size),
        shuffle=bool(loader_setting(cfg, "shuffle", True)),
        num_workers=int(loader_setting(cfg, "num_workers", 0) or 0),
        packed_mask=not unpad,
        **data_kwargs,
    )
    val_loader = None
    if val_datasets is not None:
        val_loader, _ = build_dataloader(
            val_datasets,
            tokenizer,
            batch_size=int(cfg.get("batch_size_val") or cfg.batch_size),
            shuffle=False,
            drop_last=False,
            **data_kwargs,
        )
    steps_per_epoch = epoch_steps(cfg, len(loader), accum)
    epochs = int(cfg.get("epochs", 1))

    # ---- optimizer, schedule -----------------------------------------------------------
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if in_bwd:
        from tunesmith.config import resolve_component
        from tunesmith.training.optimizers import OptimizerInBackward

        kwargs = OmegaConf.to_container(cfg.optimizer, resolve=True)
        kwargs.pop("_component_")
        optimizer = OptimizerInBackward(
            trainable, resolve_component(cfg.optimizer._component_), **kwargs
        )
    else:
        optimizer = instantiate(
            cfg.optimizer,
            [p for _, p in trainable],
            **fused_adam(cfg.optimizer, device, world_size),
        )
    opt = setup_optimization(
        cfg,
        model,
        checkpointer,
        sampler,
        state,
        resume=resume,
        device=device,
        rank=rank,
        world_size=world_size,
        is_peft=is_peft,
        seed=seed,
        epochs=epochs,
        accum=accum,
        total_steps=epochs * steps_per_epoch,
        sharded=sharded,
        optimizer=optimizer,
    )
    del state
    lr_scheduler, epochs_run, global_step, save = (
        opt.lr_scheduler,
        opt.epochs_run,
        opt.global_step,
        opt.save,
    )

    # ---- training loop -----------------------------------------------------------------
    total_steps = epochs * steps_per_epoch
    observer = Observer(
        cfg,
        rank=rank,
        world_size=world_size,
        device=device,
        total_steps=total_steps,
        initial=global_step,
        summary=describe_run(
            cfg, model=model, loader=loader, checkpointer=checkpointer, device=device,
            dtype=dtype, world_size=world_size, steps_per_epoch=steps_per_epoch, epochs=epochs,
            accum=accum, is_peft=is_peft, resumed_step=global_step if resume else None,
        ),
    )  # fmt: skip
    save_every = int(cfg.get("save_every_n_steps") or 0)
    log_every = int(cfg.get("log_every_n_steps") or 1)
    # bf16/fp16 matmuls on CPU keep per-shape state (oneDNN): round the unpadded length up so
    # a run meets a handful of shapes instead of a new one every step (fp32 does not need it)
    bucket = 64 if unpad and device.type == "cpu" and dtype != torch.float32 else 1
    model.train()
    loss_sum = torch.zeros((), device=device)
    step_in_epoch = 0
    with GracefulShutdown() as shutdown, observer.profiler() as profiler:
        for epoch in range(epochs_run, epochs):
            sampler.set_epoch(epoch)
            step_in_epoch = max(0, global_step - epoch * steps_per_epoch)
            batches = iter(loader)
            while step_in_epoch < steps_per_epoch:
                # One optimizer step = `accum` micro-batches. Their trained tokens are counted
                # (over all ranks) before any backward, so each micro-batch's mean loss is
                # weighted by n / total up front: the gradient is the token mean of the whole
                # global batch with no extra pass over the gradients (and the same formula
                # holds when parameters step inside backward).
                micro = [
                    batch_inputs(next(batches), device, ignore_index, unpad, bucket, cp)
                    for _ in range(accum)
                ]
                counts = [count_trainable_tokens(labels, ignore_index) for _, labels in micro]
                num_tokens = torch.stack(counts).sum()
                (total_tokens,) = reduce_metrics(num_tokens.clone())
                # FSDP2 averages over the dp (x cp) ranks; total_tokens counts each batch once
                # per tensor-parallel rank (cp ranks count their own shards), so
                # world_size / total = dp_size * cp / (global tokens)
                weight = world_size / total_tokens.clamp(min=1)
                for (batch, labels), n in zip(micro, counts):
                    with activations_ctx:
                        out = model(batch.pop("tokens"), **batch)
                    with compute_context(dtype, device):
                        loss = loss_fn(out, labels)
                    loss_sum += loss.detach() * n  # the logged loss is the token loss alone
                    scaled = add_router_loss(loss, router_loss, model) * (n * weight)
                    (scaler.scale(scaled) if scaler else scaled).backward()
                    del out, loss
                del micro
                grad_norm = None
                if not in_bwd:
                    grad_norm = clip_and_step(model, optimizer, max_norm, scaler)
                    optimizer.zero_grad(set_to_none=True)
                if lr_scheduler is not None:
                    lr_scheduler.step()
                global_step += 1
                step_in_epoch += 1
                profiler.step()
                save.poll()  # publishes a finished async save

                log_now = global_step % log_every == 0 or step_in_epoch == steps_per_epoch
                loss_value = None
                if log_now:  # the only host syncs of the loop
                    (loss_total,) = reduce_metrics(loss_sum)
                    loss_value = float(loss_total / total_tokens.clamp(min=1))
                observer.log_step(
                    global_step,
                    loss=loss_value,
                    lr=optimizer.param_groups[0]["lr"],
                    tokens=total_tokens // dims.tp,  # each tp rank counted the same batch
                    grad_norm=grad_norm,
                    extra=router_loss.metrics(model) if router_loss and log_now else None,
                )
                loss_sum.zero_()
                if val_loader is not None and global_step % val_every == 0:
                    val_loss = validation_loss(model, loss_fn, val_loader, device, ignore_index)
                    observer.log_validation(global_step, val_loss)
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
                    save.finish()
                    observer.close()
                    shutdown.exit()
            save(
                epoch + 1,
                intermediate=epoch + 1 < epochs,
                global_step=global_step,
                step_in_epoch=step_in_epoch,
            )
            step_in_epoch = 0
    save.finish()
    observer.close()  # writes the loss plot the model card shows
    if upload is not None and rank == 0:
        upload_after_training(cfg, save.saved, "finetune", upload)
    destroy_distributed()


if __name__ == "__main__":  # python finetune.py --config ... (also under torchrun)
    from tunesmith.cli._child import script_main

    raise SystemExit(script_main(recipe_main, "finetune"))
