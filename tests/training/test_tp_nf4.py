"""QLoRA pieces under tensor parallelism: an NF4 piece cut from the whole weight's
quantization dequantizes to exactly that piece of the whole (quantizing the piece alone does
not), and a tiny QLoRA Llama split over 2 gloo ranks gives one process's logits, adapter
gradients and gathered state dict, with and without sequence parallelism."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

pytest.importorskip("torchao")

from tunesmith.modules.peft._nf4 import (  # noqa: E402
    dequantize,
    nf4_shard,
    nf4_shard_misfit,
    quantize_nf4,
)

WORLD = 2


@pytest.mark.parametrize("shape", [(256, 256), (128, 512), (512, 128), (64, 128)])
@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("parts", [2, 4])
def test_piece_dequantizes_like_the_whole(shape: tuple[int, int], dim: int, parts: int) -> None:
    torch.manual_seed(0)
    whole = quantize_nf4(torch.randn(shape))
    why = nf4_shard_misfit(shape, dim, parts)
    if why is not None:  # (64, 128) by 4 columns: 32 values per row
        with pytest.raises(ValueError, match="not a whole number of NF4 blocks"):
            nf4_shard(whole, dim, parts, 0)
        return
    reference = dequantize(whole).chunk(parts, dim)
    for index in range(parts):
        piece = nf4_shard(whole, dim, parts, index)
        assert tuple(piece.shape) == tuple(reference[index].shape)
        assert torch.equal(dequantize(piece), reference[index])


def test_quantizing_a_piece_alone_differs() -> None:
    """Why pieces are cut from the whole quantization: the double quantization's scale mean
    and group maxima are whole-tensor statistics."""
    torch.manual_seed(0)
    weight = torch.randn(256, 256) * torch.linspace(0.1, 2.0, 256)
    left = weight[:, :128].contiguous()
    alone = dequantize(quantize_nf4(left))
    cut = dequantize(nf4_shard(quantize_nf4(weight), 1, 2, 0))
    assert not torch.equal(alone, cut)


def test_piece_on_meta_has_the_local_layout() -> None:
    with torch.device("meta"):
        whole = quantize_nf4(torch.empty(256, 512))
    piece = nf4_shard(whole, 1, 2, 1)
    assert piece.is_meta and tuple(piece.shape) == (256, 256)
    assert piece.n_blocks == 1024 and piece.scaler_block_size == 4


def _model():
    """A 2-layer QLoRA Llama, hidden 256 (every 1/2 piece is whole NF4 blocks)."""
    from tunesmith.models import build_from_hf

    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 96,
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    }
    torch.manual_seed(0)
    return build_from_hf(
        config,
        lora_attn_modules=["q_proj", "v_proj", "output_proj"],
        apply_lora_to_mlp=True,
        lora_rank=4,
        lora_alpha=8,
        quantize_base=True,
    )


def _state() -> dict[str, torch.Tensor]:
    """Plain weights with non-zero ``lora_b`` (so every adapter gradient is non-zero)."""
    torch.manual_seed(1)
    sd = {k: torch.randn(v.shape) * 0.1 for k, v in _model().state_dict().items()}
    return sd


def _freeze_base(model) -> None:
    from tunesmith.modules.peft import get_adapter_params, set_trainable_params

    set_trainable_params(model, get_adapter_params(model))


def _run(model, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    logits = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    grads = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            g = p.grad
            grads[name] = g.full_tensor() if hasattr(g, "full_tensor") else g
    return logits.detach(), grads


def _worker(rank: int, port: int, out: str, sequence_parallel: bool) -> None:
    torch.set_num_threads(1)
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from tunesmith.training.distributed import gather_cpu_state_dict
    from tunesmith.training.meta_init import load_full_state_dict
    from tunesmith.training.tensor_parallel import apply_tensor_parallel, decoder_tp_plan

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        with torch.device("meta"):
            model = _model()
        _freeze_base(model)  # before the plan, as the recipes do: the plan keeps the flags
        plan = decoder_tp_plan(model, sequence_parallel=sequence_parallel)
        mesh = init_device_mesh("cpu", (WORLD,), mesh_dim_names=("tp",))
        apply_tensor_parallel(model, mesh, plan)
        trainable = [name for name, p in model.named_parameters() if p.requires_grad]
        state = _state()
        load_full_state_dict(model, state, torch.device("cpu"))
        tokens = torch.randint(0, 96, (2, 17), generator=torch.Generator().manual_seed(2))
        logits, grads = _run(model, tokens)
        sd = gather_cpu_state_dict(model, is_rank_zero=rank == 0)
        if rank == 0:
            torch.save({"logits": logits, "grads": grads, "sd": sd, "trainable": trainable}, out)
        else:
            assert sd == {}
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("sequence_parallel", [False, True], ids=["tp", "tp-sp"])
def test_two_ranks_match_one_process(sequence_parallel: bool, tmp_path: Path) -> None:
    """The TP model's logits, every adapter gradient (colwise ``lora_a`` and rowwise
    ``lora_b`` replicated: their per-rank partial sums all-reduced) and the gathered,
    dequantized state dict equal one process's QLoRA model; the trainable parameters are the
    adapters alone (sequence parallelism: the rowwise NF4 layers reduce-scatter along the
    sequence, and the norms torch's ``SequenceParallel`` re-registers stay frozen)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "tp.pt")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(port, out, sequence_parallel), nprocs=WORLD, join=True)
    got = torch.load(out, weights_only=False)

    model = _model()
    state = _state()
    model.load_state_dict(state)
    _freeze_base(model)
    assert got["trainable"] == [n for n, p in model.named_parameters() if p.requires_grad]
    tokens = torch.randint(0, 96, (2, 17), generator=torch.Generator().manual_seed(2))
    logits, grads = _run(model, tokens)
    assert (got["logits"] - logits).abs().max() <= 1e-5
    assert got["grads"].keys() == grads.keys() and len(grads) == 2 * 2 * 6
    for name, grad in grads.items():
        assert grad.abs().max() > 0, name
        assert (got["grads"][name] - grad).abs().max() <= 1e-5 * max(1.0, grad.abs().max()), name
    want = {k: v.detach() for k, v in model.state_dict().items()}
    assert got["sd"].keys() == want.keys()
    for key, value in want.items():  # the NF4 base: bit-identical dequantized values
        assert torch.equal(got["sd"][key], value), key
