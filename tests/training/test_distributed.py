"""FSDP2 on CPU (gloo, 2 processes): a sharded, gradient-accumulated step equals the
single-process step over the same global batch; full state dicts gather to rank 0."""

from __future__ import annotations

import copy
import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from tunesmith.training.activations import apply_activation_checkpointing
from tunesmith.training.compile import compile_model
from tunesmith.training.distributed import (
    barrier,
    destroy_distributed,
    gather_cpu_state_dict,
    get_distributed_backend,
    get_full_optimizer_state_dict,
    get_world_size_and_rank,
    init_distributed,
    is_distributed,
    load_from_full_model_state_dict,
    load_from_full_optimizer_state_dict,
    reduce_metrics,
    shard_model,
)
from tunesmith.training.gradients import clip_grad_norm, count_trainable_tokens, scale_grads
from tunesmith.training.optimizers import OptimizerInBackward

WORLD = 2
STEPS = 3
IGNORE = -100


class TinyLM(nn.Module):
    """tokens [b, s] -> logits [b, s, 32]."""

    def __init__(self) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(32, 16)
        self.layers = nn.ModuleList(
            [nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 16), nn.GELU()) for _ in range(2)]
        )
        self.output = nn.Linear(16, 32, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = h + layer(h)
        return self.output(h)


def _full_state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return TinyLM().state_dict()


def _global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    tokens = torch.randint(0, 32, (8, 10), generator=g)
    labels = tokens.roll(-1, 1).clone()
    for row, n_masked in enumerate([0, 9, 2, 7, 5, 1, 8, 3]):  # rank 1 gets fewer tokens
        labels[row, : n_masked + step] = IGNORE
    return tokens, labels


def _ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)


def _reference(in_backward: bool) -> tuple[list[float], dict[str, torch.Tensor], dict]:
    """One process, one batch of 8 per step."""
    model = TinyLM()
    model.load_state_dict(_full_state_dict())
    opt = _new_optimizer(model, in_backward)
    losses = []
    for step in range(STEPS):
        tokens, labels = _global_batch(step)
        loss = _ce(model(tokens), labels)
        loss.backward()
        if not in_backward:
            clip_grad_norm(model, 0.5)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses, model.state_dict(), get_full_optimizer_state_dict(model, opt, True)


def _new_optimizer(model: nn.Module, in_backward: bool) -> torch.optim.Optimizer:
    if in_backward:
        return OptimizerInBackward(model.named_parameters(), torch.optim.AdamW, lr=1e-2)
    return torch.optim.AdamW(model.parameters(), lr=1e-2)


def _moments(optim_sd: dict) -> dict[str, torch.Tensor]:
    """``{"<param>.exp_avg": tensor, ...}`` from either full optimizer state format."""
    if "optimizers" in optim_sd:
        per_param = {n: sd["state"][0] for n, sd in optim_sd["optimizers"].items()}
    else:
        per_param = optim_sd["state"]
    return {f"{n}.{k}": v for n, st in per_param.items() for k, v in st.items() if k != "step"}


def _worker(rank: int, port: int, out_dir: str, in_backward: bool, compile: bool = False) -> None:
    torch.set_num_threads(1)  # before any op: a forked child cannot use the parent's OpenMP pool
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
    )
    assert init_distributed(device_type="cpu")
    world_size, rank = get_world_size_and_rank()
    with torch.device("meta"):
        model = TinyLM()
    apply_activation_checkpointing(model)
    shard_model(model, reshard_after_forward=True)
    # Only rank 0 holds the checkpoint; the others receive their shards by broadcast.
    full_sd = _full_state_dict() if rank == 0 else {}
    load_from_full_model_state_dict(model, full_sd, "cpu", strict=True, broadcast_from_rank0=True)
    if compile:
        compile_model(model)  # after sharding, as the recipe does
    if in_backward:
        opt = OptimizerInBackward(model.named_parameters(), torch.optim.AdamW, lr=1e-2)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses, norms = [], []
    for step in range(STEPS):
        tokens, labels = _global_batch(step)
        mine = slice(rank * 4, rank * 4 + 4)
        micro = 4 if in_backward else 2  # in-backward cannot accumulate
        loss_sum = torch.zeros(())
        num_tokens = torch.zeros((), dtype=torch.long)
        if in_backward:
            # One micro-batch: scale the loss itself (the gradients are consumed in backward).
            n = count_trainable_tokens(labels[mine])
            total = reduce_metrics(n.clone())[0]
            loss = _ce(model(tokens[mine]), labels[mine])
            (loss * n * world_size / total).backward()
            loss_sum += loss.detach() * n
            num_tokens += n
        else:
            for t, lab in zip(tokens[mine].split(micro), labels[mine].split(micro)):
                n = count_trainable_tokens(lab)
                loss = _ce(model(t), lab)
                (loss * n).backward()
                loss_sum += loss.detach() * n
                num_tokens += n
        loss_sum, num_tokens = reduce_metrics(loss_sum, num_tokens)
        if not in_backward:
            scale_grads(model, world_size / num_tokens)
            norms.append(clip_grad_norm(model, 0.5).item())
        opt.step()
        opt.zero_grad()
        losses.append((loss_sum / num_tokens).item())
    full = gather_cpu_state_dict(model, is_rank_zero=rank == 0)
    # Optimizer state: gather to rank 0, save, load on every rank into a fresh optimizer over
    # the sharded model, gather again: the round trip must be exact.
    optim_full = get_full_optimizer_state_dict(model, opt, is_rank_zero=rank == 0)
    if rank == 0:
        torch.save(optim_full, Path(out_dir) / "optim.pt")
    barrier()
    optim_full = torch.load(Path(out_dir) / "optim.pt")
    fresh = _new_optimizer(model, in_backward)
    load_from_full_optimizer_state_dict(model, fresh, optim_full)
    optim_again = get_full_optimizer_state_dict(model, fresh, is_rank_zero=rank == 0)
    if rank == 0:
        torch.save(
            {
                "losses": losses,
                "state_dict": full,
                "norms": norms,
                "optim": optim_full,
                "optim_again": optim_again,
            },
            Path(out_dir) / "result.pt",
        )
    else:
        assert full == {} and optim_again == {}
    destroy_distributed()
    os._exit(0)  # skip gloo's thread teardown at interpreter exit (it can abort)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "in_backward,compile",
    [
        pytest.param(False, False, id="adamw_accum_clip"),
        pytest.param(True, False, id="optimizer_in_bwd"),
        pytest.param(False, True, id="adamw_compiled", marks=pytest.mark.slow),
    ],
)
def test_fsdp2_step_equals_single_process(tmp_path: Path, in_backward: bool, compile: bool) -> None:
    # fork: the workers inherit this process's imports (spawn re-imports torch: ~10 s each).
    # Each worker sets torch.set_num_threads(1) first: OpenMP pools do not survive fork.
    ctx = mp.start_processes(
        _worker,
        args=(_free_port(), str(tmp_path), in_backward, compile),
        nprocs=WORLD,
        join=False,
        start_method="fork",
    )
    deadline = time.monotonic() + 180
    while not ctx.join(timeout=2):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail("FSDP2 workers did not finish in 180 s (deadlock?)")
    result = torch.load(tmp_path / "result.pt")
    ref_losses, ref_sd, ref_optim = _reference(in_backward)
    assert result["losses"] == pytest.approx(ref_losses, abs=1e-4)
    if not in_backward:
        assert len(result["norms"]) == STEPS and all(n > 0 for n in result["norms"])
    assert result["losses"][-1] < result["losses"][0]
    assert set(result["state_dict"]) == set(ref_sd)
    for key, value in ref_sd.items():
        torch.testing.assert_close(result["state_dict"][key], value, atol=1e-4, rtol=0, msg=key)
    moments, again, ref_moments = (
        _moments(result["optim"]),
        _moments(result["optim_again"]),
        _moments(ref_optim),
    )
    assert set(moments) == set(ref_moments) and len(moments) == 2 * len(ref_sd)
    for key, value in ref_moments.items():
        assert moments[key].shape == value.shape
        torch.testing.assert_close(moments[key], value, atol=1e-5, rtol=1e-4, msg=key)
        torch.testing.assert_close(again[key], moments[key], atol=0, rtol=0, msg=key)


def test_single_process_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not is_distributed() and not init_distributed()
    assert get_world_size_and_rank() == (1, 0)
    loss, tokens = torch.tensor(6.0), torch.tensor(3)
    assert reduce_metrics(loss, tokens) == (loss, tokens)
    model = TinyLM()
    sd = gather_cpu_state_dict(model, is_rank_zero=True)
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    assert gather_cpu_state_dict(model, is_rank_zero=False) == {}
    assert get_distributed_backend("cuda") == "cuda:nccl,cpu:gloo"
    assert get_distributed_backend("cpu") == "gloo"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    assert is_distributed()
    with pytest.raises(RuntimeError, match="nproc_per_node"):
        init_distributed()


def test_adapter_only_gather() -> None:
    model = nn.Module()
    model.q = nn.Module()
    model.q.weight = nn.Parameter(torch.ones(2, 2))
    model.q.lora_a = nn.Linear(2, 1, bias=False)
    model.q.lora_b = nn.Linear(1, 2, bias=False)
    sd = gather_cpu_state_dict(copy.deepcopy(model), True, adapter_weights_only=True)
    assert sorted(sd) == ["q.lora_a.weight", "q.lora_b.weight"]


@pytest.mark.parametrize("in_backward", [False, True], ids=["adamw", "optimizer_in_bwd"])
def test_full_optimizer_state_round_trip_single_process(in_backward: bool) -> None:
    model = TinyLM()
    opt = _new_optimizer(model, in_backward)
    tokens, labels = _global_batch(0)
    _ce(model(tokens), labels).backward()
    opt.step()
    opt.zero_grad()
    full = get_full_optimizer_state_dict(model, opt, is_rank_zero=True)
    assert set(_moments(full)) == {
        f"{n}.{k}" for n, _ in model.named_parameters() for k in ("exp_avg", "exp_avg_sq")
    }
    fresh = _new_optimizer(model, in_backward)
    load_from_full_optimizer_state_dict(model, fresh, full)
    again = _moments(get_full_optimizer_state_dict(model, fresh, is_rank_zero=True))
    for key, value in _moments(full).items():
        assert torch.equal(again[key], value), key
    with pytest.raises(ValueError, match="optimizer"):
        load_from_full_optimizer_state_dict(
            model, fresh, _new_optimizer(model, not in_backward).state_dict() | {"state": {0: {}}}
        )


def _peft_decoder(quantize_base: bool) -> nn.Module:
    from tunesmith.models.builder import build_decoder, lora_settings
    from tunesmith.models.spec import ModelSpec
    from tunesmith.modules.peft import get_adapter_params, set_trainable_params

    # 256-wide so each NF4 weight's quantization blocks split evenly over 2 ranks.
    spec = ModelSpec(
        family="LLAMA3", vocab_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
        embed_dim=256, intermediate_dim=512, max_seq_len=64, tie_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    lora = lora_settings(
        ["q_proj", "v_proj"], apply_lora_to_mlp=True, lora_rank=4, quantize_base=quantize_base
    )
    model = build_decoder(spec, lora)
    set_trainable_params(model, get_adapter_params(model))
    for name, param in model.named_parameters():
        if "lora_b" in name:  # non-zero B so every adapter weight gets a gradient
            nn.init.normal_(param, std=0.02)
    return model


def _peft_grads(model: nn.Module, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    logits = model(tokens)
    F.cross_entropy(logits.flatten(0, 1), tokens.roll(-1, 1).flatten()).backward()
    return {
        n: p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
        for n, p in model.named_parameters()
        if p.requires_grad
    }


def _peft_worker(rank: int, port: int, out_dir: str, quantize_base: bool) -> None:
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
    )  # fmt: skip
    init_distributed(device_type="cpu")
    model = _peft_decoder(quantize_base)
    shard_model(model)
    tokens = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(1))
    grads = _peft_grads(model, tokens[rank * 2 : rank * 2 + 2])
    adapter = gather_cpu_state_dict(model, rank == 0, adapter_weights_only=True)
    if rank == 0:
        torch.save({"grads": grads, "adapter": adapter}, Path(out_dir) / "peft.pt")
    destroy_distributed()
    os._exit(0)


@pytest.mark.parametrize(
    "quantize_base",
    [pytest.param(False, id="lora"), pytest.param(True, id="qlora_nf4", marks=pytest.mark.slow)],
)
def test_fsdp2_lora_and_qlora_gradients(tmp_path: Path, quantize_base: bool) -> None:
    pytest.importorskip("tunesmith.models.builder")
    ctx = mp.start_processes(
        _peft_worker,
        args=(_free_port(), str(tmp_path), quantize_base),
        nprocs=WORLD,
        join=False,
        start_method="fork",
    )
    deadline = time.monotonic() + 180
    while not ctx.join(timeout=2):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail("FSDP2 workers did not finish in 180 s (deadlock?)")
    result = torch.load(tmp_path / "peft.pt", weights_only=False)
    tokens = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(1))
    model = _peft_decoder(quantize_base)
    ref = _peft_grads(model, tokens)
    assert set(result["grads"]) == set(ref) and all("lora_" in k for k in ref)
    for name, grad in ref.items():
        torch.testing.assert_close(result["grads"][name], grad, atol=1e-6, rtol=1e-4, msg=name)
    assert set(result["adapter"]) == set(ref)
