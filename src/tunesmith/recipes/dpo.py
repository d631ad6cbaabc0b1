"""Recipe ``dpo``: preference optimization (DPO, RSO, IPO, SimPO, ORPO, KTO), full or LoRA, on 1
or N devices.

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
losses, SimPO and ORPO, run no reference model; ORPO adds the chosen responses' NLL). Logged per
step: ``loss``, ``rewards/chosen``, ``rewards/rejected``, ``rewards/accuracies``,
``rewards/margins``, ``log_probs/chosen``, ``log_probs/rejected`` (means over the step's pairs,
all ranks); ORPO also ``nll_loss``, ``log_odds_ratio``, ``log_odds_chosen``.

KTO (``loss._component_: tunesmith.rlhf.loss.KTOLoss``) trains on unpaired rows: a
``tunesmith.datasets.kto_dataset`` (prompt, completion, bool label), or any preference dataset,
whose pairs are split into a desirable and an undesirable row. Each batch also carries KTO's
mismatched rows (each prompt with the previous row's completion) for the KL reference point;
logged: ``loss``, ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``, ``kl``,
``log_probs/chosen``, ``log_probs/rejected``. The step itself lives in ``_preference_step``.
"""

from __future__ import annotations

from omegaconf import DictConfig

from tunesmith.config import ConfigError, instantiate
from tunesmith.recipes._finetune_observe import Observer
from tunesmith.recipes._finetune_setup import (
    build_model,
    check_vocab,
    start_training,
)
from tunesmith.recipes._optimization import epoch_steps, setup_optimization
from tunesmith.recipes._parallel_setup import parallel_layout
from tunesmith.recipes._preference_data import (
    build_preference_dataloader,
    build_preference_datasets,
)
from tunesmith.recipes._preference_step import PreferenceStep
from tunesmith.recipes._run_summary import describe_run
from tunesmith.recipes._sharded_saves import open_checkpointers
from tunesmith.rlhf.loss import PreferenceLoss
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

__all__ = ["recipe_main", "build_preference_datasets", "build_preference_dataloader"]

log = get_logger(__name__)


def recipe_main(cfg: DictConfig) -> None:
    """Train ``cfg.model`` on the preference pairs of ``cfg.dataset`` with ``cfg.loss``."""
    # ---- environment -------------------------------------------------------------------
    device, dtype, world_size, rank = start_training(cfg)  # log, ranges, devices
    upload = upload_option(cfg)  # a run that could not publish stops before it trains
    dims, mesh = parallel_layout(cfg, world_size, device)  # FSDP2 / HSDP x tensor parallel
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
            "recipe needs one of torchtune.rlhf.loss.DPOLoss, RSOLoss, IPOLoss, SimPOLoss, "
            "tunesmith.rlhf.loss.ORPOLoss or KTOLoss",
            key="loss._component_",
        )
    kl_rows = bool(getattr(loss_fn, "uses_kl", False))
    if kl_rows and int(cfg.batch_size) < 2:
        raise ConfigError(
            f"batch_size={cfg.batch_size}: KTO's KL reference point pairs each prompt with "
            "another row's completion in the batch; set batch_size >= 2",
            key="batch_size",
        )

    # ---- output folders, then the data, checked before any weights load -------------
    checkpointer, sharded = open_checkpointers(cfg, resume)  # + DCP saves from every rank
    tokenizer = instantiate(cfg.tokenizer)
    checkpointer.serving = serving_info(tokenizer, cfg.tokenizer)  # saved beside weights
    datasets = build_preference_datasets(cfg.dataset, tokenizer, unpaired=loss_fn.unpaired)

    # ---- weights, seed, models ---------------------------------------------------------
    state = checkpointer.load_checkpoint()
    if resume and sharded is not None:  # base weights + the DCP folder's recipe state
        state.update(sharded.recipe_state())
    check_vocab(datasets, tokenizer, state, cfg.checkpointer)
    seed = agreed_seed(state.get("seed") if resume else cfg.get("seed"), world_size, device)
    model, is_peft = build_model(cfg, state, device, master_dtype(dtype), world_size, mesh)
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
        # frozen; built on the meta device and split like the policy (TP x FSDP2)
        reference, _ = build_model(cfg, ref_state, device, dtype, world_size, mesh)
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
    activations_ctx = compute_context(dtype, device, activation_offloading_context(cfg, model))
    scaler = loss_scaler(dtype, optimizer_in_bwd=False)

    # ---- data loader -------------------------------------------------------------------
    loader, sampler = build_preference_dataloader(
        datasets,
        tokenizer,
        batch_size=int(cfg.batch_size),
        world_size=dims.dp_size,  # the ranks of one tensor-parallel group read the same batch
        rank=dims.dp_rank(mesh),
        seed=seed,
        shuffle=bool(cfg.get("shuffle", True)),
        num_workers=int(cfg.get("num_workers") or 0),
        pin_memory=device.type == "cuda",
        unpaired=loss_fn.unpaired,
        kl_rows=kl_rows,
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
    step = PreferenceStep(loss_fn, model, reference, dtype=dtype, device=device,
                          activations_ctx=activations_ctx, world_size=world_size)  # fmt: skip
    model.train()
    sums = step.zeros()  # (sum, count) per metric, then trained tokens
    step_in_epoch = 0
    with GracefulShutdown() as shutdown, observer.profiler() as profiler:
        for epoch in range(epochs_run, epochs):
            sampler.set_epoch(epoch)
            step_in_epoch = max(0, global_step - epoch * steps_per_epoch)
            batches = iter(loader)
            while step_in_epoch < steps_per_epoch:
                for _ in range(accum):
                    loss, parts = step(step.prepare(next(batches)))  # next-token targets
                    loss = loss / accum
                    (scaler.scale(loss) if scaler else loss).backward()
                    sums += parts
                grad_norm = clip_and_step(model, optimizer, max_norm, scaler)
                optimizer.zero_grad(set_to_none=True)
                if lr_scheduler is not None:
                    lr_scheduler.step()
                global_step += 1
                step_in_epoch += 1
                profiler.step()
                save.poll()  # publishes a finished async save

                (step_tokens,) = reduce_metrics(sums[-1].clone())  # all ranks, for tokens/s
                log_now = global_step % log_every == 0 or step_in_epoch == steps_per_epoch
                metrics = None
                if log_now:  # the only host syncs of the loop
                    (totals,) = reduce_metrics(sums.clone())
                    metrics = step.means(totals)
                observer.log_step(
                    global_step,
                    loss=None if metrics is None else metrics["loss"],
                    lr=optimizer.param_groups[0]["lr"],
                    tokens=step_tokens.long() // dims.tp,  # each tp rank counted the batch
                    grad_norm=grad_norm,
                )
                if metrics is not None and observer.logger is not None:
                    del metrics["loss"]  # logged by the observer
                    observer.logger.log_dict(metrics, step=global_step)
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
        upload_after_training(cfg, save.saved, "dpo", upload)
    destroy_distributed()


if __name__ == "__main__":  # python dpo.py --config ... (also under torchrun)
    from tunesmith.cli._child import script_main

    raise SystemExit(script_main(recipe_main, "dpo"))
