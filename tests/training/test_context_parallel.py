"""Context parallelism's pieces: the zigzag layout, the sharded batch (tokens, global
positions, mask rows), and a 2-rank gloo decoder whose logits and gradients equal one
process's over the whole sequence (causal with padding to 2 x cp, and packed documents)."""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tunesmith.models.builder import build_decoder
from tunesmith.models.spec import ModelSpec
from tunesmith.training.context_parallel import ContextParallel, enable_context_parallel

SPEC = ModelSpec(
    family="LLAMA3", vocab_size=97, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=32,
    intermediate_dim=64, max_seq_len=64,
)  # fmt: skip
SEQ = 13  # not a multiple of 2 x cp: the shard pads it to 16


def _packed_mask(seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three documents of a packed row: ``mask [1, s, s]`` block-causal, ``input_pos [1, s]``."""
    lens = [5, 6, seq - 11]
    doc = torch.cat([torch.full((n,), i) for i, n in enumerate(lens)])
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    mask = causal & (doc[:, None] == doc[None, :])
    return mask[None], torch.cat([torch.arange(n) for n in lens])[None]


@pytest.mark.parametrize("cp", [1, 2, 3, 4])
def test_zigzag_positions_partition_the_sequence(cp: int) -> None:
    """Every position is held by exactly one rank; rank r holds chunks r and 2cp-1-r."""
    seq = 2 * cp * 3
    held = [ContextParallel(None, cp, r).positions(seq) for r in range(cp)]
    assert all(h.numel() == seq // cp for h in held)
    assert torch.cat(held).sort().values.tolist() == list(range(seq))
    assert held[0][:3].tolist() == [0, 1, 2] and held[0][-1].item() == seq - 1


@pytest.mark.parametrize("packed", [False, True])
def test_shard_keeps_the_global_rows(packed: bool) -> None:
    """Each rank's tokens, positions, targets and mask rows are the global batch's (padded to a
    multiple of 2 x cp with untrained tokens that see only themselves)."""
    tokens = torch.arange(2 * SEQ).view(2, SEQ) + 1
    targets = tokens + 100
    inputs: dict[str, torch.Tensor] = {"tokens": tokens}
    if packed:
        mask, pos = _packed_mask(SEQ)
        inputs.update(mask=mask.expand(2, -1, -1), input_pos=pos.expand(2, -1))
    total = 16
    for rank in range(2):
        cp = ContextParallel(None, 2, rank, ignore_index=-100)
        got, got_targets = cp.shard(inputs, targets)
        mine, keys = cp.positions(total), cp.gathered_positions(total)
        real = mine < SEQ
        assert torch.equal(got["tokens"][:, real], tokens[:, mine[real]])
        assert torch.equal(got_targets[:, real], targets[:, mine[real]])
        assert (got_targets[:, ~real] == -100).all()
        want = torch.arange(total)
        if packed:  # the padding continues the last document's positions
            want = torch.cat([pos[0], torch.arange(2, 5)])
        assert torch.equal(got["input_pos"][0], want[mine])
        rows = got["mask"]
        assert rows.shape[-2:] == (total // 2, total)
        ref = torch.ones(total, total, dtype=torch.bool).tril()
        if packed:
            ref = torch.eye(total, dtype=torch.bool)
            ref[:SEQ, :SEQ] = mask[0]
        assert torch.equal(rows[0], ref[mine][:, keys])


@pytest.mark.parametrize("packed", [False, True])
def test_ulysses_shard_keeps_consecutive_tokens(packed: bool) -> None:
    """Head-sharded (ulysses) shards: rank r keeps the r-th of cp consecutive chunks and no
    mask; a packed batch's documents (from input_pos, each row padded by one more document)
    are concatenated over the rows for the attention; causal rows have none."""
    tokens = torch.arange(2 * SEQ).view(2, SEQ) + 1
    inputs: dict[str, torch.Tensor] = {"tokens": tokens}
    if packed:
        mask, pos = _packed_mask(SEQ)
        inputs.update(mask=mask.expand(2, -1, -1), input_pos=pos.expand(2, -1))
    for rank in range(2):
        cp = ContextParallel(None, 2, rank, method="ulysses")
        got, got_targets = cp.shard(inputs, tokens + 100)
        assert cp.positions(16).tolist() == list(range(8 * rank, 8 * rank + 8))
        assert set(got) == {"tokens", "input_pos"} and got["tokens"].shape == (2, 8)
        assert cp.full_mask is None
        if packed:
            assert cp.documents is not None and cp.documents.seq_lens == (5, 6, 2, 3) * 2
        else:
            assert cp.documents is None
            assert torch.equal(got["input_pos"][0], torch.arange(8 * rank, 8 * rank + 8))


def test_method_choice_follows_the_heads() -> None:
    """auto: ulysses when every layer's query heads (per TP rank) divide by cp and its
    key/value heads divide by cp or divide cp, else allgather; an explicit ulysses that cannot
    split the heads is one sentence naming the fix."""
    from tunesmith.training.context_parallel import context_parallel_method

    with torch.device("meta"):
        model = build_decoder(SPEC)  # 4 heads, 2 kv heads
    assert context_parallel_method("auto", model, 2) == "ulysses"
    assert context_parallel_method("auto", model, 4) == "ulysses"  # kv heads repeated x2
    assert context_parallel_method("auto", model, 2, tp=2) == "ulysses"  # 1 kv head per TP rank
    assert context_parallel_method("auto", model, 3) == "allgather"
    assert context_parallel_method("auto", model, 8) == "allgather"
    assert context_parallel_method("allgather", model, 2) == "allgather"
    with pytest.raises(ValueError, match="num_heads=4 is not divisible by context_par") as err:
        context_parallel_method("ulysses", model, 3)
    assert "\n" not in str(err.value) and "context_parallel_method=allgather" in str(err.value)
    with torch.device("meta"):
        model = build_decoder(dataclasses.replace(SPEC, num_heads=6, num_kv_heads=3, embed_dim=48))
    with pytest.raises(ValueError, match="num_kv_heads=3 neither divides nor is divisible"):
        context_parallel_method("ulysses", model, 2)


def test_bad_batch_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="context_parallel_dim=1"):
        ContextParallel(None, 2, 0).shard(
            {"tokens": torch.zeros(1, 4, dtype=torch.long), "encoder_input": torch.zeros(1)},
            torch.zeros(1, 4, dtype=torch.long),
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _forward_backward(model: torch.nn.Module, inputs: dict, targets: torch.Tensor) -> tuple:
    logits = model(inputs.pop("tokens"), **inputs)
    keep = targets != -100
    loss = torch.nn.functional.cross_entropy(logits[keep], targets[keep], reduction="sum")
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return logits.detach(), grads


def _batch(packed: str) -> tuple[dict, torch.Tensor]:
    """Two random rows: ``causal``, ``packed`` (block-causal mask and restarting positions), or
    ``mask`` (the same mask, global positions: ulysses attends under the whole mask)."""
    tokens = torch.randint(0, SPEC.vocab_size, (2, SEQ))
    targets = torch.randint(0, SPEC.vocab_size, (2, SEQ))
    inputs: dict = {"tokens": tokens}
    if packed != "causal":
        mask, pos = _packed_mask(SEQ)
        inputs["mask"] = mask.expand(2, -1, -1)
        if packed == "packed":
            inputs["input_pos"] = pos.expand(2, -1)
    return inputs, targets


def _worker(rank: int, port: int, out: str, packed: str, method: str, kv: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = build_decoder(dataclasses.replace(SPEC, num_kv_heads=kv))
    inputs, targets = _batch(packed)
    cp = ContextParallel(dist.group.WORLD, 2, rank, method=method)
    enable_context_parallel(model, cp)
    local, local_targets = cp.shard(inputs, targets)
    logits, grads = _forward_backward(model, local, local_targets)
    for g in grads.values():  # the cp ranks' partial gradients sum to the whole sequence's
        dist.all_reduce(g)
    torch.save({"logits": logits, "positions": cp.positions(16), "grads": grads},
               Path(out) / f"rank{rank}.pt")  # fmt: skip
    dist.destroy_process_group()
    os._exit(0)


@pytest.mark.parametrize(
    ("packed", "method", "kv"),
    [
        pytest.param("causal", "allgather", 2, id="allgather-causal", marks=pytest.mark.slow),
        pytest.param("packed", "allgather", 2, id="allgather-packed"),
        pytest.param("causal", "ulysses", 2, id="ulysses-causal", marks=pytest.mark.slow),
        pytest.param("packed", "ulysses", 2, id="ulysses-packed"),
        pytest.param("mask", "ulysses", 2, id="ulysses-mask-only", marks=pytest.mark.slow),
        pytest.param("packed", "ulysses", 1, id="ulysses-packed-kv1", marks=pytest.mark.slow),
    ],
)  # ~20 s each (two spawned interpreters); every case pads 13 tokens to 16
def test_two_ranks_equal_one_process(packed: str, method: str, kv: int, tmp_path: Path) -> None:
    """Logits of every real token and every parameter's gradient (summed over the cp ranks)
    equal the one-process decoder over the whole sequence (atol 1e-5, fp32), for both
    methods: gathered keys/values, and heads exchanged for tokens (ulysses; with one
    key/value head for two ranks it is repeated, one copy per rank)."""
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path), packed, method, kv), nprocs=2,
                       start_method="spawn")  # fmt: skip
    torch.manual_seed(0)
    model = build_decoder(dataclasses.replace(SPEC, num_kv_heads=kv))
    inputs, targets = _batch(packed)
    logits, grads = _forward_backward(model, inputs, targets)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        mine = got["positions"]
        real = mine < SEQ
        torch.testing.assert_close(got["logits"][:, real], logits[:, mine[real]], atol=1e-5, rtol=0)
        for name, g in grads.items():
            torch.testing.assert_close(got["grads"][name], g, atol=1e-5, rtol=1e-4)
