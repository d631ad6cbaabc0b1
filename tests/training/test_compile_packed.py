"""``compile=True`` on packed, unpadded batches: no recompiles after warm-up (issue 18).

The document lengths change every step; they reach the compiled layers only inside a
``Documents`` object that the (eager) attention kernel reads, so dynamo compiles each layer
for the first shape, once more for dynamic shapes, and never again.
"""

from __future__ import annotations

import random

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from tunesmith.data import padded_collate_packed
from tunesmith.models import build_decoder
from tunesmith.models.spec import ModelSpec
from tunesmith.modules.loss import LinearCrossEntropyLoss
from tunesmith.recipes._unpad import batch_inputs as _to_device
from tunesmith.training.compile import compile_loss, compile_model

SPEC = ModelSpec(
    family="LLAMA3",
    vocab_size=97,
    num_layers=1,
    num_heads=4,
    num_kv_heads=2,
    embed_dim=32,
    intermediate_dim=64,
    max_seq_len=128,
)


def _pack(rng: random.Random, size: int) -> dict[str, torch.Tensor]:
    lengths, total = [], 0
    while total < size - 8:
        n = min(rng.randint(3, 40), size - total)
        lengths.append(n)
        total += n
    tokens = [rng.randint(1, 96) for _ in range(total)] + [0] * (size - total)
    labels = [t if i % 3 else -100 for i, t in enumerate(tokens[:total])] + [-100] * (size - total)
    pos = [i for n in lengths for i in range(n)] + list(range(size - total))
    return {
        "tokens": torch.tensor(tokens),
        "labels": torch.tensor(labels),
        "input_pos": torch.tensor(pos),
        "seq_lens": torch.tensor(lengths + ([size - total] if size > total else [])),
    }


@pytest.mark.slow
def test_packed_compile_stops_recompiling_after_warmup():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = build_decoder(SPEC)
    layers, losses = CompileCounter(), CompileCounter()
    compile_model(model, backend=layers)
    loss_fn = LinearCrossEntropyLoss(num_output_chunks=2)
    loss_fn.set_model_output(model)
    compile_loss(loss_fn, backend=losses)
    rng = random.Random(0)
    frames, seen = [], set()
    for _ in range(6):
        batch = padded_collate_packed([_pack(rng, 128), _pack(rng, 128)])
        inputs, targets = _to_device(batch, torch.device("cpu"), -100, unpad=True)
        seen.add(tuple(inputs["seq_lens"].seq_lens if hasattr(inputs["seq_lens"], "seq_lens")
                       else inputs["seq_lens"]))  # fmt: skip
        loss = loss_fn(model(inputs.pop("tokens"), **inputs), targets)
        loss.backward()
        frames.append((layers.frame_count, losses.frame_count))
    assert len(seen) == 6  # new document lengths every step
    assert frames[0][0] > 0 and frames[0][1] > 0  # compiled, not silently eager
    assert frames[1] == frames[-1], frames  # nothing recompiled after the second step
