"""Recipe ``ppo``: RLHF with PPO (full finetune), on 1 or N devices (FSDP2).

torchtune 0.6.1's ``ppo_full_finetune_single_device`` (an alias) with its config keys and
semantics: four models -- the trained ``policy_model`` (``checkpointer``), its frozen
reference (``ref_policy_checkpointer``), and two copies of ``reward_and_value_model`` (a
classifier with ``num_classes: 1``, checkpoints of ``model_type: REWARD``): the frozen reward
model (``reward_checkpointer``) and the trained value model (``value_checkpointer``, saved
beside the policy). Each step samples ``max_generated_tokens`` for ``batch_size`` prompts
(``forward_batch_size`` at a time), truncates at the first of ``stop_token_ids``, scores the
responses (``reward_penalty`` for responses without a stop token / shorter than
``min_response_length``), shapes the reward with ``kl_coeff`` x KL to the reference, estimates
advantages with GAE (``gamma``, ``lmbda``; whitened), then runs ``ppo_epochs`` passes over
shuffled minibatches of ``ppo_batch_size`` with torchtune's clipped ``PPOLoss`` (one optimizer
step per minibatch over both trained models). ``num_steps`` counts prompts, as in torchtune:
``num_steps // (batch_size x processes)`` PPO steps.

Under ``tunesmith run --nproc_per_node N ppo`` every size above is per process; advantages
are whitened and losses token-averaged over all processes, so N processes x ``batch_size``
train like one process with N x ``batch_size`` (exactly, with ``forward_batch_size=1`` and one
minibatch per PPO epoch). Sampling draws from the RL loop's rollout RNG, derived from (seed,
step, prompts) as in ``grpo``, so a resumed run continues the same curve. ``optimizer_in_bwd=True`` (torchtune's low-memory
setting) takes the same steps as a plain optimizer (it needs ``gradient_accumulation_steps=1``).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from tunesmith.config import ConfigError, instantiate
from tunesmith.config._ranges import check_ranges
from tunesmith.recipes._checkpoint_saver import _SamplerAt
from tunesmith.recipes._finetune_observe import Observer
from tunesmith.recipes._finetune_setup import (
    build_datasets,
    build_model,
    check_vocab,
    full_state_dicts,
    local_device,
    open_checkpointer,
    sampled_loader,
)
from tunesmith.recipes._optimization import schedule_and_resume
from tunesmith.recipes._ppo_steps import (
    STEP_METRICS,
    PPOSettings,
    advantages_and_returns,
    make_trajectory,
    ppo_minibatch,
)
from tunesmith.recipes._rl_loop import check_prompt_lengths
from tunesmith.recipes._run_summary import describe_run
from tunesmith.rlhf.ppo import PPOLoss
from tunesmith.training.checkpointing._recipe_state import build_recipe_state
from tunesmith.training.checkpointing._serving import serving_info
from tunesmith.training.checkpointing._signals import GracefulShutdown
from tunesmith.training.distributed import (
    agreed_seed,
    any_rank,
    barrier,
    destroy_distributed,
    get_world_size_and_rank,
    init_distributed,
    reduce_metrics,
)
from tunesmith.training.gradients import clip_and_step
from tunesmith.utils import get_device, get_dtype, get_logger, log_runtime, start_run_log

__all__ = ["recipe_main"]

log = get_logger(__name__)

REQUIRED = ("policy_model", "reward_and_value_model", "checkpointer", "ref_policy_checkpointer",
            "value_checkpointer", "reward_checkpointer", "loss", "optimizer", "dataset",
            "tokenizer", "num_steps", "batch_size")  # fmt: skip


def recipe_main(cfg: DictConfig) -> None:
    """PPO-train ``cfg.policy_model`` against the reward model of ``cfg.reward_checkpointer``."""
    start_run_log()
    check_ranges(cfg)
    missing = [k for k in REQUIRED if cfg.get(k) is None]
    if missing:
        raise ConfigError(
            f"the ppo recipe needs {missing[0]} (see torchtune's mistral/7B_full_ppo_low_memory "
            "config for every key)",
            key=missing[0],
        )
    device = get_device(cfg.get("device"))
    init_distributed(device_type=device.type)
    world_size, rank = get_world_size_and_rank()
    device = local_device(device)
    dtype = get_dtype(cfg.get("dtype"), device)
    if dtype == torch.float16:
        raise ConfigError("dtype=fp16 is not supported by the ppo recipe; use bf16 or fp32",
                          key="dtype")  # fmt: skip
    log_runtime(device, rank)
    resume = bool(cfg.get("resume_from_checkpoint", False))
    s = _settings(cfg)
    loss_fn = instantiate(cfg.loss)
    if not isinstance(loss_fn, PPOLoss):
        raise ConfigError(
            f"loss._component_={cfg.loss.get('_component_')} is not PPOLoss; the ppo recipe "
            "needs torchtune.rlhf.loss.PPOLoss",
            key="loss._component_",
        )

    # ---- output folders, data and stop tokens, checked before any weights load -----------
    checkpointer = open_checkpointer(cfg, resume)
    tokenizer = instantiate(cfg.tokenizer)
    checkpointer.serving = serving_info(tokenizer, cfg.tokenizer)  # saved beside weights
    datasets = build_datasets(cfg.dataset, tokenizer)
    s = _with_tokens(s, cfg, tokenizer)
    state = checkpointer.load_checkpoint()
    check_vocab(datasets, tokenizer, state, cfg.checkpointer)
    seed = agreed_seed(state.get("seed") if resume else cfg.get("seed"), world_size, device)

    # ---- the four models ---------------------------------------------------------------
    def load(key: str) -> dict[str, Any]:
        return instantiate(cfg[key], resume_from_checkpoint=False).load_checkpoint()

    policy_cfg = _with_model(cfg, cfg.policy_model)
    critic_cfg = _with_model(cfg, cfg.reward_and_value_model)
    policy, _ = build_model(policy_cfg, state, device, dtype, world_size)
    reference, _ = build_model(policy_cfg, load("ref_policy_checkpointer"), device, dtype,
                               world_size)  # fmt: skip
    value_state = {"model": state.pop("value_model")} if resume else load("value_checkpointer")
    value, _ = build_model(critic_cfg, value_state, device, dtype, world_size)
    del value_state
    reward, _ = build_model(critic_cfg, load("reward_checkpointer"), device, dtype, world_size)
    for frozen in (reference, reward):
        frozen.requires_grad_(False)
        frozen.eval()
    for m in (policy, value):  # torchtune disables dropout in the trained models
        for mod in m.modules():
            if isinstance(mod, nn.Dropout):
                mod.p = 0.0
    _check_heads(policy, value, cfg)
    context = getattr(policy, "max_seq_len", None)
    check_prompt_lengths(datasets, s.max_generated_tokens, context, "policy_model.max_seq_len")
    pair = nn.ModuleDict({"policy": policy, "value": value})

    # ---- data, optimizer, schedule ------------------------------------------------------
    loader, sampler = sampled_loader(
        datasets, _prompt_collate, batch_size=s.batch_size, world_size=world_size, rank=rank,
        seed=seed, shuffle=bool(cfg.get("shuffle", True)), unit="prompts",
    )  # fmt: skip
    total_steps = int(cfg.num_steps) // (s.batch_size * world_size)
    if total_steps == 0:
        raise ConfigError(
            f"num_steps={cfg.num_steps} counts prompts and is smaller than one step's "
            f"batch_size x processes ({s.batch_size * world_size}): raise num_steps",
            key="num_steps",
        )
    steps_per_epoch = len(loader)
    epochs = math.ceil(total_steps / steps_per_epoch)
    optimizer = instantiate(cfg.optimizer, [p for p in pair.parameters() if p.requires_grad])
    opt_steps = total_steps * s.ppo_epochs * (s.batch_size // s.ppo_batch_size)
    lr_scheduler, epochs_run, steps_run = schedule_and_resume(
        cfg, pair, optimizer, sampler, state, resume=resume, world_size=world_size,
        total_steps=opt_steps,
    )  # fmt: skip
    del state
    value_ckpt = instantiate(cfg.value_checkpointer, resume_from_checkpoint=False)

    def save(epoch: int, intermediate: bool, step_in_epoch: int, mid: bool) -> None:
        model_sd, optim_sd = full_state_dicts(pair, optimizer if intermediate else None,
                                              world_size)  # fmt: skip
        if rank == 0:
            policy_sd = {k[7:]: v for k, v in model_sd.items() if k.startswith("policy.")}
            value_sd = {k[6:]: v for k, v in model_sd.items() if k.startswith("value.")}
            to_save: dict[str, Any] = {"model": policy_sd}
            if intermediate:
                to_save.update(
                    build_recipe_state(
                        epochs_run=epoch,
                        steps_run=steps_run,
                        lr_scheduler=lr_scheduler,
                        sampler=_SamplerAt(sampler, step_in_epoch * s.batch_size),
                        seed=seed,
                        total_epochs=epochs,
                    ),  # fmt: skip
                    optimizer=optim_sd,
                    value_model=value_sd,
                )
            step = steps_run if mid else None
            checkpointer.save_checkpoint(to_save, epoch=epoch, intermediate_checkpoint=intermediate,
                                         step=step)  # fmt: skip
            value_ckpt.save_checkpoint({"model": value_sd}, epoch=epoch, step=step)
        barrier()

    # ---- training loop -----------------------------------------------------------------
    observer = Observer(
        cfg, rank=rank, world_size=world_size, device=device, total_steps=total_steps,
        initial=steps_run, curves=("scores", "loss", "kl", "lr"),
        summary=describe_run(
            policy_cfg, model=policy, loader=loader, checkpointer=checkpointer, device=device,
            dtype=dtype, world_size=world_size, steps_per_epoch=steps_per_epoch, epochs=epochs,
            accum=s.accum, is_peft=False, resumed_step=steps_run if resume else None,
            step_cap=total_steps,
            extra_models={"reference": reference, "value": value, "reward": reward},
        ),
    )  # fmt: skip
    save_every = int(cfg.get("save_every_n_steps") or 0)
    log_every = int(cfg.get("log_every_n_steps") or 1)
    max_norm = cfg.get("clip_grad_norm")
    policy.train()
    value.train()
    done = steps_run >= total_steps
    with GracefulShutdown() as shutdown, observer.profiler() as profiler:
        for epoch in range(epochs_run, epochs):
            if done:
                break
            sampler.set_epoch(epoch)
            step_in_epoch = max(0, steps_run - epoch * steps_per_epoch)
            for prompts in loader:
                t0 = time.perf_counter()
                traj, p = make_trajectory(
                    prompts, policy, reference, value, reward, s, seed=seed, step=steps_run,
                    device=device,
                )  # fmt: skip
                t_rollout = time.perf_counter() - t0
                adv, returns, kl, kl_rewards = advantages_and_returns(traj, s, world_size)
                t1 = time.perf_counter()
                sums = torch.zeros(len(STEP_METRICS), dtype=torch.float64, device=device)
                shuffle = torch.Generator().manual_seed(seed * 1_000_003 + steps_run)
                grad_norm = None
                for _ in range(s.ppo_epochs):
                    order = torch.randperm(s.batch_size, generator=shuffle).to(device)
                    for i in range(0, s.batch_size, s.ppo_batch_size):
                        sums += ppo_minibatch(
                            order[i : i + s.ppo_batch_size],
                            traj,
                            adv,
                            returns,
                            p,
                            policy,
                            value,
                            loss_fn,
                            s,
                            world_size,
                        )
                        grad_norm = clip_and_step(pair, optimizer, max_norm)
                        optimizer.zero_grad(set_to_none=True)
                        if lr_scheduler is not None:
                            lr_scheduler.step()
                t_train = time.perf_counter() - t1
                steps_run += 1
                step_in_epoch += 1
                profiler.step()
                n_opt = s.ppo_epochs * (s.batch_size // s.ppo_batch_size)
                rollout = _rollout_metrics(traj, adv, kl, kl_rewards)
                tokens = torch.tensor(float(traj.query_responses.numel()), device=device)
                (tokens,) = reduce_metrics(tokens)
                if steps_run % log_every == 0 or steps_run == total_steps:
                    metrics = _finish_metrics(sums / n_opt, rollout)
                    metrics["rollout_tokens_per_second"] = float(tokens) / max(t_rollout, 1e-9)
                    metrics["training_tokens_per_second"] = float(tokens) / max(t_train, 1e-9)
                    observer.log_step(
                        steps_run, loss=metrics.pop("loss"), lr=optimizer.param_groups[0]["lr"],
                        tokens=tokens, grad_norm=grad_norm,
                        postfix={"reward": f"{metrics['scores']:.4g}", "kl": f"{metrics['kl']:.4g}"},
                    )  # fmt: skip
                    if observer.logger is not None:
                        observer.logger.log_dict(metrics, step=steps_run)
                else:
                    observer.log_step(steps_run, loss=None, lr=optimizer.param_groups[0]["lr"],
                                      tokens=tokens, grad_norm=None)  # fmt: skip
                done = steps_run >= total_steps
                stop = any_rank(shutdown.requested, world_size, device)
                mid = step_in_epoch < steps_per_epoch and not done
                if stop or (save_every and steps_run % save_every == 0 and mid):
                    save(epoch, intermediate=True, step_in_epoch=step_in_epoch, mid=mid)
                if stop:
                    observer.close()
                    shutdown.exit()
                if done:
                    break
            save(epoch + 1, intermediate=not done, step_in_epoch=0, mid=False)
    observer.close()
    destroy_distributed()


# ----------------------------------------------------------------------------------- helpers
def _settings(cfg: DictConfig) -> PPOSettings:
    """torchtune's PPO keys and its divisibility checks, as one-line config errors."""
    batch = int(cfg.batch_size)
    fwd = int(cfg.get("forward_batch_size") or batch)
    ppo_batch = int(cfg.get("ppo_batch_size") or batch)
    accum = int(cfg.get("gradient_accumulation_steps") or 1)
    for key, value, divisor in (("forward_batch_size", batch, fwd),
                                ("ppo_batch_size", batch, ppo_batch)):  # fmt: skip
        if value % divisor:
            raise ConfigError(
                f"batch_size ({value}) must be divisible by {key} ({divisor}); set {key} to a "
                "divisor of batch_size",
                key=key,
            )
    if ppo_batch % accum:
        raise ConfigError(
            f"ppo_batch_size ({ppo_batch}) must be divisible by gradient_accumulation_steps "
            f"({accum})",
            key="gradient_accumulation_steps",
        )
    if cfg.get("optimizer_in_bwd", False) and (accum > 1 or cfg.get("clip_grad_norm")):
        raise ConfigError(
            "optimizer_in_bwd=True needs gradient_accumulation_steps=1 and clip_grad_norm=null "
            "(as torchtune); set them, or optimizer_in_bwd=False",
            key="optimizer_in_bwd",
        )
    if int(cfg.get("max_generated_tokens", 1)) < 1:
        raise ConfigError("max_generated_tokens must be at least 1", key="max_generated_tokens")
    min_len = cfg.get("min_response_length")
    return PPOSettings(
        batch_size=batch, forward_batch_size=fwd, ppo_epochs=int(cfg.get("ppo_epochs", 1)),
        ppo_batch_size=ppo_batch, accum=accum, temperature=float(cfg.get("temperature", 1.0)),
        top_k=cfg.get("top_k"), max_generated_tokens=int(cfg.get("max_generated_tokens", 58)),
        min_response_length=None if min_len is None else int(min_len),
        penalise_no_eos=bool(cfg.get("penalise_no_eos", True)),
        reward_penalty=float(cfg.get("reward_penalty", -3.0)),
        kl_coeff=float(cfg.get("kl_coeff", 0.01)), gamma=float(cfg.get("gamma", 1.0)),
        lmbda=float(cfg.get("lmbda", 0.95)), whiten_rewards=bool(cfg.get("whiten_rewards", False)),
        enable_kv_cache=bool(cfg.get("enable_kv_cache", True)), pad_id=0, stop_token_ids=(),
    )  # fmt: skip


def _with_tokens(s: PPOSettings, cfg: DictConfig, tokenizer: Any) -> PPOSettings:
    """Fill the pad id and stop tokens (``stop_token_ids``, else the tokenizer's)."""
    from dataclasses import replace

    stops = cfg.get("stop_token_ids")
    if stops:
        stop_ids = tuple(int(t) for t in stops)
        eos = getattr(tokenizer, "eos_id", None)
        if eos is not None and eos not in stop_ids:
            log.warning("tokenizer eos_id (%s) is not in stop_token_ids %s", eos, list(stop_ids))
    else:
        stop_ids = tuple(int(t) for t in getattr(tokenizer, "stop_tokens", None) or ())
        if not stop_ids:
            log.warning("no stop_token_ids and the tokenizer has no stop_tokens: no response "
                        "ends early and every one counts as truncated")  # fmt: skip
    pad = getattr(tokenizer, "pad_id", None)
    return replace(s, pad_id=int(pad or 0), stop_token_ids=stop_ids)


def _with_model(cfg: DictConfig, node: DictConfig) -> DictConfig:
    """The config with ``model`` set to ``node`` (what ``build_model`` builds)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    plain["model"] = OmegaConf.to_container(node, resolve=True)
    return OmegaConf.create(plain)


def _check_heads(policy: nn.Module, value: nn.Module, cfg: DictConfig) -> None:
    """The critic must be a one-output classifier; the policy a language model."""
    head = getattr(value, "output", None)
    out = getattr(head, "out_features", None)
    if out != 1:
        raise ConfigError(
            f"reward_and_value_model has {out} outputs per token; PPO needs a classifier with "
            "num_classes=1 (and checkpoints of model_type: REWARD)",
            key="reward_and_value_model.num_classes",
        )
    pout = getattr(getattr(policy, "output", None), "out_features", None)
    if pout == 1:
        raise ConfigError(
            "policy_model is a 1-output classifier; it must be a language model",
            key="policy_model._component_",
        )


def _prompt_collate(rows: list[dict[str, Any]]) -> list[list[int]]:
    """A batch of prompts as token lists (left-padded per generation chunk later)."""
    return [list(r["tokens"]) for r in rows]


@torch.no_grad()
def _rollout_metrics(traj: Any, adv: torch.Tensor, kl: torch.Tensor, kl_r: torch.Tensor
                     ) -> torch.Tensor:  # fmt: skip
    """Sums over this rank's rollouts: rows, score, score^2, kl, kl_reward, response length,
    stop tokens, truncated, advantage sum, advantage^2, advantage tokens."""
    mask = ~traj.response_padding_masks
    scores = traj.scores.double()
    lengths = mask.sum(-1).double()
    truncated = (~traj.response_padding_masks.any(-1)).double()
    a = adv.double()[mask]
    parts = [scores.new_tensor(float(scores.numel())), scores.sum(), scores.pow(2).sum(),
             kl.double().sum(), kl_r.double().sum(), lengths.sum(), (1 - truncated).sum(),
             truncated.sum(), a.sum(), a.pow(2).sum(), a.new_tensor(float(a.numel()))]  # fmt: skip
    return torch.stack(parts)


def _finish_metrics(step: torch.Tensor, rollout: torch.Tensor) -> dict[str, float]:
    """The logged dict (torchtune's names plus std/advantage/entropy/truncation), all ranks."""
    (step, rollout) = reduce_metrics(step.clone(), rollout.clone())  # step: token-weighted
    r = rollout.tolist()
    rows, adv_n = max(r[0], 1.0), max(r[10], 1.0)
    mean = r[1] / rows
    adv_mean = r[8] / adv_n
    out = {k: float(v) for k, v in zip(STEP_METRICS, step.tolist())}
    out.update(
        scores=mean,
        reward_std=math.sqrt(max(r[2] / rows - mean * mean, 0.0)),
        rlhf_reward=mean + r[4] / rows,
        kl=r[3] / rows,
        kl_reward=r[4] / rows,
        response_lengths=r[5] / rows,
        num_stop_tokens=r[6],
        fraction_truncated=r[7] / rows,
        advantage_mean=adv_mean,
        advantage_std=math.sqrt(max(r[9] / adv_n - adv_mean * adv_mean, 0.0)),
    )
    return out
