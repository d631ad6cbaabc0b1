"""Expert parallelism on 2 CPU processes (gloo all-to-all): a tiny Qwen3-MoE (with LoRA on
the experts too) trains with the same losses and gradients as one process on the whole batch."""

from __future__ import annotations

import copy
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from tests.models._tiny_hf import tiny_configs

WORLD = 2
STEPS = 3


def _model(lora: bool):
    from tunesmith.models import build_from_hf

    config = tiny_configs()["qwen3_moe"].to_dict()
    config["mlp_only_layers"] = []
    torch.manual_seed(0)
    kwargs = dict(lora_attn_modules=["q_proj"], apply_lora_to_mlp=True, lora_rank=4) if lora else {}
    model = build_from_hf(config, **kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model


def _loss(model, tokens: torch.Tensor, total: int) -> torch.Tensor:
    """Sum of next-token losses over ``tokens [b, s]`` divided by the global count ``total``."""
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), reduction="sum") / total


def _train(model, batches, rank: int | None, group) -> list[float]:
    """SGD steps; with ``rank`` each process takes its half of every batch and all-reduces the
    gradients of the replicated (non-expert) parameters and the loss."""
    import torch.distributed as dist

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5)
    losses = []
    for tokens in batches:
        total = tokens[:, 1:].numel()
        part = tokens if rank is None else tokens.chunk(WORLD)[rank]
        loss = _loss(model, part, total)
        loss.backward()
        if rank is not None:
            for name, p in model.named_parameters():
                if p.grad is not None and ".mlp.experts." not in name:
                    dist.all_reduce(p.grad, group=group)
            loss = loss.detach().clone()
            dist.all_reduce(loss, group=group)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def _worker(rank: int, port: int, out: str, lora: bool) -> None:
    torch.set_num_threads(1)
    import torch.distributed as dist

    from tunesmith.training.expert_parallel import apply_expert_parallel

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    model = _model(lora)
    if lora:
        from tunesmith.modules.peft import get_adapter_params, set_trainable_params

        set_trainable_params(model, get_adapter_params(model))
        with torch.no_grad():  # non-zero B: the adapters shape the gradients from step 1
            for p in get_adapter_params(model).values():
                p.normal_(0.0, 0.1)
    reference = copy.deepcopy(model)
    batches = [
        torch.randint(3, 150, (4, 9), generator=torch.Generator().manual_seed(i))
        for i in range(STEPS)
    ]
    expected = _train(reference, batches, None, None)
    apply_expert_parallel(model, dist.group.WORLD)
    got = _train(model, batches, rank, dist.group.WORLD)
    local = model.layers[0].mlp.experts.gate_proj
    want = reference.layers[0].mlp.experts.gate_proj[rank * 4 : (rank + 1) * 4]
    Path(out, f"rank{rank}.txt").write_text(
        f"{expected}\n{got}\n{(local - want).abs().max().item()}\n{local.shape[0]}\n"
    )
    dist.destroy_process_group()
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora_experts"])
def test_expert_parallel_equals_one_process(tmp_path: Path, lora: bool) -> None:
    ctx = mp.start_processes(
        _worker,
        args=(_free_port(), str(tmp_path), lora),
        nprocs=WORLD,
        join=False,
        start_method="fork",
    )
    while not ctx.join(timeout=120):
        pass
    for rank in range(WORLD):
        expected, got, diff, local = (tmp_path / f"rank{rank}.txt").read_text().splitlines()
        expected, got = eval(expected), eval(got)  # lists of floats written above
        assert max(abs(a - b) for a, b in zip(expected, got)) <= 1e-4, (expected, got)
        assert expected[-1] != expected[0]  # the steps changed the model
        assert int(local) == 4  # 8 experts over 2 ranks
        assert float(diff) <= 1e-5  # this rank's experts equal the one-process run's slice


def test_expert_count_not_divisible_is_one_line() -> None:
    from tunesmith.modules.moe import moe_layers
    from tunesmith.training import expert_parallel

    model = _model(False)

    class _Group:  # the size / rank queries are all apply_expert_parallel asks of a group
        pass

    orig = expert_parallel.dist.get_world_size, expert_parallel.dist.get_rank
    expert_parallel.dist.get_world_size = lambda group=None: 3  # type: ignore[assignment]
    expert_parallel.dist.get_rank = lambda group=None: 0  # type: ignore[assignment]
    try:
        with pytest.raises(
            ValueError, match=r"expert_parallel_dim=3 does not divide num_experts=8"
        ):
            expert_parallel.apply_expert_parallel(model, _Group())
    finally:
        expert_parallel.dist.get_world_size, expert_parallel.dist.get_rank = orig
    assert all(m.expert_group is None for m in moe_layers(model))
