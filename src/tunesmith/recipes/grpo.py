"""Recipe ``grpo``: online RL with group-relative advantages (GRPO and its variants), full or
LoRA, on 1 or N devices (FSDP2).

Each step takes ``batch_size`` prompts per rank and samples ``grpo_samples`` completions of
each with the live policy (eval mode, no grad; :class:`~tunesmith.rlhf.rollout.LocalRolloutEngine`
with the KV cache, ``forward_batch_size`` prompts per call), scores them with the configured
``reward_functions`` (weighted by ``reward_weights``), turns the rewards into group-normalised
advantages (``scale_rewards``: ``group | batch | none``, over the whole all-rank batch), takes
reference log-probs (full: a frozen copy of the initial weights, from ``ref_checkpointer`` or
``checkpointer``; LoRA: the same model with its adapters off; none when the KL coefficient is
0), then makes ``ppo_epochs`` optimizer steps over the rollout batch, each accumulating the
clipped-ratio ``loss`` over micro-batches of ``forward_batch_size`` prompts. The loss is
:class:`~tunesmith.rlhf.grpo.GRPOPolicyLoss` (TRL's ``grpo | dr_grpo | dapo | bnpo | gspo``) or
one of torchtune's dev losses (``GRPOLoss``, ``GRPOSimpleLoss``, ``GRPOCompletionLoss``;
``GRPOWithChunkedOutputLoss`` / ``LinearGRPOLoss`` run as ``GRPOSimpleLoss`` on the chunked
policy pass, which is what they compute).

A step is one rollout batch (``num_steps`` caps them, as torchtune's ``num_steps``); the
schedule counts optimizer steps (``ppo_epochs`` per step). Sampling is seeded per generation
call from (seed, step, prompts) only, so 1 and N ranks sample the same completions and a
resumed run continues the same curve. torchtune's ``grpo_full_finetune_distributed`` is an
alias; its dev configs run unchanged. Logged every step: ``loss``, ``policy_loss``, ``kl``,
``ratio``, ``clip_ratio/*``, ``entropy``, ``reward/*`` (total and per function),
``advantage/*``, ``response_length/*``, ``truncated_fraction``, rollout and training tokens/s.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from tunesmith.config import ConfigError, instantiate
from tunesmith.modules.peft import disable_adapter
from tunesmith.recipes import _rl_loop as rl
from tunesmith.recipes._finetune_observe import Observer
from tunesmith.recipes._finetune_setup import (
    build_datasets,
    build_model,
    check_vocab,
    open_checkpointer,
    sampled_loader,
    start_training,
)
from tunesmith.recipes._optimization import epoch_steps, setup_optimization
from tunesmith.recipes._run_summary import describe_run
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
from tunesmith.training.precision import compute_context, loss_scaler, master_dtype
from tunesmith.utils import get_logger

__all__ = ["recipe_main"]

log = get_logger(__name__)

LOSS_METRICS = ("loss", "policy_loss", "kl", "ratio", "clip_ratio/low", "clip_ratio/high",
                "clip_ratio/region", "entropy")  # fmt: skip
CURVES = ("reward/mean", "loss", "kl", "lr")


def recipe_main(cfg: DictConfig) -> None:
    """Train ``cfg.model`` with GRPO on the prompts of ``cfg.dataset``."""
    # ---- environment -------------------------------------------------------------------
    device, dtype, world_size, rank = start_training(cfg)  # log, ranges, devices
    resume = bool(cfg.get("resume_from_checkpoint", False))
    max_norm = cfg.get("clip_grad_norm")
    group = int(cfg.get("grpo_samples", 8))
    batch_size = int(cfg.batch_size)
    chunk = int(cfg.get("forward_batch_size") or batch_size)
    ppo_epochs = int(cfg.get("ppo_epochs", 1))
    scale = str(cfg.get("scale_rewards", "group"))
    _check_settings(cfg, group, batch_size, chunk, ppo_epochs, scale)
    loss_fn = _build_loss(cfg)
    beta = float(getattr(loss_fn, "beta", getattr(loss_fn, "kl_coeff", 0.0)))

    # ---- output folders, data, rewards: all checked before any weights load -------------
    checkpointer = open_checkpointer(cfg, resume)
    tokenizer = instantiate(cfg.tokenizer)
    checkpointer.serving = serving_info(tokenizer, cfg.tokenizer)  # saved beside weights
    datasets = build_datasets(cfg.dataset, tokenizer)
    _check_prompt_rows(cfg, datasets)
    max_new = int(cfg.max_generated_tokens)
    limit = getattr(tokenizer, "max_seq_len", None)
    rl.check_prompt_lengths(datasets, max_new, limit, "tokenizer.max_seq_len")
    functions, weights = rl.build_reward_functions(cfg)
    rl.probe_rewards(functions, weights, datasets[0])
    stops = rl.stop_tokens(cfg, tokenizer)
    # FSDP2: every rank runs the whole token budget (no early stop), cut at the stop after
    params = rl.sampling_params(cfg, tokenizer, stop=world_size == 1)
    post_stops = stops if world_size > 1 else ()

    # ---- weights, seed, models ---------------------------------------------------------
    state = checkpointer.load_checkpoint()
    check_vocab(datasets, tokenizer, state, cfg.checkpointer)
    seed = agreed_seed(state.get("seed") if resume else cfg.get("seed"), world_size, device)
    model, is_peft = build_model(cfg, state, device, master_dtype(dtype), world_size)
    model_limit = getattr(model, "max_seq_len", None)
    rl.check_prompt_lengths(datasets, max_new, model_limit, "the model's max_seq_len")
    reference = None
    if not is_peft and beta != 0.0:  # full: a frozen copy of the initial weights
        ref_state = state
        if cfg.get("ref_checkpointer") is not None:
            ref_state = instantiate(cfg.ref_checkpointer, resume_from_checkpoint=False)
            ref_state = ref_state.load_checkpoint()
        elif resume:
            ref_state = instantiate(cfg.checkpointer, resume_from_checkpoint=False)
            ref_state = ref_state.load_checkpoint()
        reference, _ = build_model(cfg, ref_state, device, dtype, world_size)
        reference.requires_grad_(False)
        reference.eval()
        del ref_state
    activations_ctx = compute_context(dtype, device, activation_offloading_context(cfg, model))
    scaler = loss_scaler(dtype, optimizer_in_bwd=False)
    from tunesmith.rlhf.rollout import LocalRolloutEngine, response_logprobs

    pad_id = getattr(tokenizer, "pad_id", None)
    pad_id = 0 if pad_id is None else int(pad_id)
    engine = LocalRolloutEngine(
        model, pad_id=pad_id, use_cache=bool(cfg.get("enable_kv_cache", True))
    )

    # ---- data loader, optimizer, schedule ------------------------------------------------
    from tunesmith.datasets import padded_collate_rl

    loader, sampler = sampled_loader(
        datasets, padded_collate_rl, batch_size=batch_size, world_size=world_size, rank=rank,
        seed=seed, shuffle=bool(cfg.get("shuffle", True)),
        num_workers=int(cfg.get("num_workers") or 0), unit="prompts",
    )  # fmt: skip
    steps_per_epoch = epoch_steps(cfg, len(loader), 1)
    epochs = int(cfg.get("epochs", 1))
    total_steps = epochs * steps_per_epoch
    if cfg.get("num_steps"):
        total_steps = min(total_steps, int(cfg.num_steps))
    opt = setup_optimization(
        cfg, model, checkpointer, sampler, state, resume=resume, device=device, rank=rank,
        world_size=world_size, is_peft=is_peft, seed=seed, epochs=epochs, accum=1,
        total_steps=total_steps * ppo_epochs,
    )  # fmt: skip
    del state
    optimizer, lr_scheduler, save = opt.optimizer, opt.lr_scheduler, opt.save
    epochs_run, global_step = opt.epochs_run, opt.global_step

    # ---- training loop -----------------------------------------------------------------
    observer = Observer(
        cfg, rank=rank, world_size=world_size, device=device, total_steps=total_steps,
        initial=global_step, curves=CURVES,
        summary=describe_run(
            cfg, model=model, loader=loader, checkpointer=checkpointer, device=device,
            dtype=dtype, world_size=world_size, steps_per_epoch=steps_per_epoch, epochs=epochs,
            accum=1, is_peft=is_peft, resumed_step=global_step if resume else None,
            extra_models={} if reference is None else {"reference": reference},
            step_cap=total_steps,
        ),
    )  # fmt: skip
    save_every = int(cfg.get("save_every_n_steps") or 0)
    save_every_epochs = int(cfg.get("save_every_n_epochs") or 1)
    log_every = int(cfg.get("log_every_n_steps") or 1)
    temperature = params.logprob_temperature
    from_hidden = world_size == 1  # under FSDP2 the output layer runs only inside forward
    dapo = getattr(loss_fn, "loss_type", None) == "dapo"
    model.train()
    done = global_step >= total_steps
    with GracefulShutdown() as shutdown, observer.profiler() as profiler:
        for epoch in range(epochs_run, epochs):
            if done:
                break
            sampler.set_epoch(epoch)
            step_in_epoch = max(0, global_step - epoch * steps_per_epoch)
            batches = iter(loader)
            while step_in_epoch < steps_per_epoch and global_step < total_steps:
                batch = next(batches)
                # ---- rollouts, rewards, advantages
                out = rl.generate_rollouts(
                    engine, model, batch, params, num_samples=group, chunk_prompts=chunk,
                    seed=seed, step=global_step, tokenizer=tokenizer, functions=functions,
                    weights=weights, stops=post_stops,
                )  # fmt: skip
                all_rewards = rl.all_gather_rows(out.rewards, device)
                from tunesmith.rlhf.grpo import group_advantages

                advantages = group_advantages(all_rewards, group, scale=scale)  # type: ignore[arg-type]
                local = advantages.view(world_size, -1)[rank]
                lo = 0
                for c in out.chunks:
                    b = c.rollout.response_tokens.shape[0]
                    c.advantages = local[lo : lo + b].to(device)
                    lo += b
                # ---- reference and old log-probs (no grad)
                with torch.no_grad():
                    for c in out.chunks:
                        if beta != 0.0:
                            ref_model = model if reference is None else reference
                            off = disable_adapter(model) if reference is None else nullcontext()
                            with off, compute_context(dtype, device):
                                c.ref_logprobs = response_logprobs(
                                    ref_model,
                                    c.rollout,
                                    temperature=temperature,
                                    from_hidden=from_hidden,
                                )
                        if ppo_epochs > 1:
                            with compute_context(dtype, device):
                                c.old_logprobs = response_logprobs(
                                    model,
                                    c.rollout,
                                    temperature=temperature,
                                    from_hidden=from_hidden,
                                )
                num_items = None
                if dapo:  # completion tokens of the whole batch per rank whose grads average
                    (tok,) = reduce_metrics(
                        torch.tensor(float(out.generated_tokens), device=device)
                    )
                    num_items = tok / world_size
                # ---- ppo_epochs optimizer steps over the rollout batch
                train_start = time.perf_counter()
                sums = torch.zeros(len(LOSS_METRICS), device=device, dtype=torch.float64)
                grad_norm = None
                for _ in range(ppo_epochs):
                    for c in out.chunks:
                        with activations_ctx:
                            logprobs, entropy = response_logprobs(
                                model,
                                c.rollout,
                                temperature=temperature,
                                return_entropy=True,
                                from_hidden=from_hidden,
                            )
                        loss, metrics = _loss(loss_fn, logprobs, c, num_items)
                        if not dapo:
                            loss = loss / len(out.chunks)
                        (scaler.scale(loss) if scaler else loss).backward()
                        mask = c.rollout.response_mask
                        metrics["entropy"] = (entropy.detach() * mask).sum() / mask.sum().clamp(
                            min=1
                        )
                        sums[0] += loss.detach().double()
                        for i, k in enumerate(LOSS_METRICS[1:], start=1):
                            if k in metrics:
                                sums[i] += metrics[k].double()
                    grad_norm = clip_and_step(model, optimizer, max_norm, scaler)
                    optimizer.zero_grad(set_to_none=True)
                    if lr_scheduler is not None:
                        lr_scheduler.step()
                train_seconds = time.perf_counter() - train_start
                global_step += 1
                step_in_epoch += 1
                profiler.step()

                # ---- metrics, all ranks
                passes = ppo_epochs * len(out.chunks) * world_size
                counts = torch.tensor(
                    [out.generated_tokens, out.generated_tokens * ppo_epochs], device=device,
                    dtype=torch.float64,
                )  # fmt: skip
                reduce_metrics(sums, counts)
                step_metrics = dict(zip(LOSS_METRICS, (sums / passes).tolist()))
                step_metrics["loss"] = float(sums[0]) / (ppo_epochs * world_size)
                if beta == 0.0:
                    step_metrics.pop("kl")
                step_metrics.update(
                    rl.rl_step_metrics(
                        all_rewards,
                        {k: rl.all_gather_rows(v, device) for k, v in out.per_function.items()},
                        advantages,
                        rl.all_gather_rows(out.lengths, device),
                        rl.all_gather_rows(out.truncated, device),
                        group_size=group,
                        rollout_tokens_per_second=float(counts[0]) / max(out.seconds, 1e-9),
                        train_tokens_per_second=float(counts[1]) / max(train_seconds, 1e-9),
                    )
                )
                log_now = global_step % log_every == 0 or global_step == total_steps
                observer.log_step(
                    global_step,
                    loss=step_metrics["loss"] if log_now else None,
                    lr=optimizer.param_groups[0]["lr"],
                    tokens=counts[1].long(),
                    grad_norm=grad_norm,
                    postfix={"reward": f"{step_metrics['reward/mean']:.3f}"},
                )
                if log_now and observer.logger is not None:
                    del step_metrics["loss"]
                    observer.logger.log_dict(step_metrics, step=global_step)
                stop = any_rank(shutdown.requested, world_size, device)
                mid_epoch = step_in_epoch < steps_per_epoch and global_step < total_steps
                if stop or (save_every and global_step % save_every == 0 and mid_epoch):
                    save(epoch, intermediate=True, global_step=global_step,
                         step_in_epoch=step_in_epoch, step=global_step if mid_epoch else None)  # fmt: skip
                if stop:
                    observer.close()
                    shutdown.exit()
            last = epoch + 1 == epochs or global_step >= total_steps
            if last or (epoch + 1) % save_every_epochs == 0:
                save(epoch + 1, intermediate=not last, global_step=global_step,
                     step_in_epoch=step_in_epoch)  # fmt: skip
            done = global_step >= total_steps
    observer.close()
    destroy_distributed()


def _check_settings(
    cfg: DictConfig, group: int, batch_size: int, chunk: int, ppo_epochs: int, scale: str
) -> None:
    if cfg.get("max_generated_tokens") is None:
        raise ConfigError(
            "max_generated_tokens is not set: give the completion budget, e.g. 256",
            key="max_generated_tokens",
        )
    if group < 2 and scale == "group":
        raise ConfigError(
            f"grpo_samples={group}: group-normalised advantages need at least 2 samples per "
            "prompt; raise grpo_samples or set scale_rewards=batch",
            key="grpo_samples",
        )
    if batch_size % chunk:
        raise ConfigError(
            f"forward_batch_size={chunk} does not divide batch_size={batch_size}: pick a divisor",
            key="forward_batch_size",
        )
    if ppo_epochs < 1:
        raise ConfigError(f"ppo_epochs={ppo_epochs}: must be >= 1", key="ppo_epochs")
    if scale not in ("group", "batch", "none"):
        raise ConfigError(
            f"scale_rewards={scale!r}: one of group, batch, none", key="scale_rewards"
        )
    if cfg.get("optimizer_in_bwd", False):
        raise ConfigError(
            "optimizer_in_bwd=True is not supported by the grpo recipe; set it to False",
            key="optimizer_in_bwd",
        )


def _build_loss(cfg: DictConfig) -> nn.Module:
    """``cfg.loss`` (default ``GRPOPolicyLoss()``): TRL's variants or torchtune's names."""
    from tunesmith.rlhf.grpo import (
        GRPOCompletionLoss,
        GRPOLoss,
        GRPOPolicyLoss,
        GRPOSimpleLoss,
        GRPOWithChunkedOutputLoss,
        LinearGRPOLoss,
    )

    loss_fn = GRPOPolicyLoss() if cfg.get("loss") is None else instantiate(cfg.loss)
    if isinstance(loss_fn, GRPOWithChunkedOutputLoss | LinearGRPOLoss):
        # torchtune's chunked losses are GRPOSimpleLoss computed from logits (or hidden
        # states) a chunk at a time, to never hold [b, n, vocab] fp32 logits. The policy pass
        # here (response_logprobs) already projects response positions a chunk at a time and
        # recomputes them in backward, so the same loss on its log-probs is the same number.
        log.info(
            "%s: computed as GRPOSimpleLoss(kl_coeff=%g) on the chunked policy pass's log-probs",
            type(loss_fn).__name__,
            loss_fn.kl_coeff,
        )
        loss_fn = GRPOSimpleLoss(epsilon=loss_fn.epsilon, kl_coeff=loss_fn.kl_coeff)
    if not isinstance(loss_fn, GRPOPolicyLoss | GRPOLoss | GRPOSimpleLoss | GRPOCompletionLoss):
        raise ConfigError(
            f"loss._component_={cfg.loss.get('_component_')} is not a GRPO loss on log-probs; "
            "use tunesmith.rlhf.grpo.GRPOPolicyLoss (loss_type grpo, dr_grpo, dapo, bnpo, "
            "gspo) or torchtune.dev.grpo.loss.GRPOLoss / GRPOSimpleLoss / "
            "GRPOWithChunkedOutputLoss",
            key="loss._component_",
        )
    if isinstance(loss_fn, GRPOPolicyLoss) and loss_fn.max_completion_length is None:
        loss_fn.max_completion_length = int(cfg.max_generated_tokens)  # dr_grpo's constant
    return loss_fn


def _check_prompt_rows(cfg: DictConfig, datasets: list[Any]) -> None:
    """Prompt datasets only: rows must carry ``tokens`` and ``prompt`` (rlbase's builders)."""
    sample = datasets[0][0]
    missing = [k for k in ("tokens", "prompt") if k not in sample]
    if missing:
        raise ConfigError(
            f"dataset._component_={cfg.dataset.get('_component_')} gives samples with keys "
            f"{sorted(sample)}, not prompts (missing {missing}); the grpo recipe needs a prompt "
            "dataset such as tunesmith.datasets.rl_prompt_dataset or gsm8k_dataset",
            key="dataset._component_",
        )


def _loss(
    loss_fn: nn.Module, logprobs: torch.Tensor, c: rl.RolloutChunk, num_items: Any
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(scalar loss, metrics)`` of one micro-batch for either loss family."""
    from tunesmith.rlhf.grpo import GRPOPolicyLoss

    mask = c.rollout.response_mask
    if isinstance(loss_fn, GRPOPolicyLoss):
        return loss_fn(logprobs, c.old_logprobs, c.ref_logprobs, c.advantages, mask,
                       num_items=num_items)  # fmt: skip
    old = logprobs.detach() if c.old_logprobs is None else c.old_logprobs
    ref = logprobs.detach() if c.ref_logprobs is None else c.ref_logprobs
    loss, policy, kl, ratio, clipfrac = loss_fn(old, logprobs, ref, c.advantages, mask)
    metrics = {"policy_loss": -policy, "kl": kl, "ratio": ratio, "clip_ratio/region": clipfrac}
    return loss, {k: torch.as_tensor(v, device=logprobs.device) for k, v in metrics.items()}


if __name__ == "__main__":  # python grpo.py --config ... (also under torchrun)
    from tunesmith.cli._child import script_main

    raise SystemExit(script_main(recipe_main, "grpo"))
