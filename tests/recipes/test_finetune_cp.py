"""Context parallelism on gloo ranks gives the one-process run: the loss of every step and the
saved weights (fp32, same global batch), alone and folded into FSDP2 (``dp_shard_cp``), full
and LoRA, padded and packed, for both methods (head-sharded all-to-all ``ulysses``, the default
where the heads divide, and the key/value ``allgather``); bad layouts are one line before
weights load."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from tests.recipes.conftest import base_config
from tests.recipes.test_finetune_cli import TUNESMITH, _env, _run, _write
from tests.recipes.test_finetune_tp import _assert_same, _over
from tests.recipes.test_finetune_tp import references as _references

references = _references  # the one-process run of each mode (fixture), shared with TP tests


def _launch(
    tmp: Path,
    model_dir: Path,
    data: Path,
    mode: str,
    nproc: int,
    batch: int,
    ran: str = "ulysses",
    **keys,
):
    """A torchrun launch that must say it ran context parallel with method ``ran`` (not merely
    replicated)."""
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = base_config(tmp / "dist", model_dir, data, batch_size=batch, **_over(mode), **keys)
    config = str(_write(cfg, tmp / "dist.yaml"))
    proc = _run(["run", "--nproc_per_node", str(nproc), "finetune", "--config", config], tmp)
    said = f"every sequence is split over {keys['context_parallel_dim']} ranks ({ran})"
    assert said in proc.stdout + proc.stderr, proc.stderr[-3000:]
    return tmp / "dist"


def _method(method: str) -> dict[str, str]:
    """The key choosing ``method``: none for ulysses (auto picks it: the tiny Llama's 4 query
    and 2 key/value heads divide by cp=2), ``context_parallel_method`` for allgather."""
    return {} if method == "ulysses" else {"context_parallel_method": method}


METHODS = pytest.mark.parametrize("method", ["ulysses", "allgather"])


@pytest.mark.slow
@METHODS
def test_context_parallel_matches_one_process(
    method: str,
    references,
    tiny_llama: Path,
    instruct_data: Path,
    tmp_path: Path,
) -> None:
    """context_parallel_dim=2 on 2 ranks: both read the whole batch of 4, each keeps half of
    every sequence; same losses and weights as one process (LoRA)."""
    dist = _launch(tmp_path, tiny_llama, instruct_data, "lora", 2, 4, method,
                   context_parallel_dim=2, **_method(method))  # fmt: skip
    _assert_same(references("lora"), dist)


@pytest.mark.slow
@METHODS
def test_context_parallel_full_matches_one_process(
    method: str,
    references,
    tiny_llama: Path,
    instruct_data: Path,
    tmp_path: Path,
) -> None:
    dist = _launch(tmp_path, tiny_llama, instruct_data, "full", 2, 4, method,
                   context_parallel_dim=2, **_method(method))  # fmt: skip
    _assert_same(references("full"), dist)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "method"), [("full", "ulysses"), ("lora", "ulysses"), ("lora", "allgather")]
)
def test_fsdp_x_context_parallel_matches_one_process(
    mode: str,
    method: str,
    references,
    tiny_llama: Path,
    instruct_data: Path,
    tmp_path: Path,
) -> None:
    """FSDP2 2 x CP 2 on 4 ranks (batch 2 per data-parallel rank = the reference's 4): FSDP2
    shards over the flattened dp_shard x cp dim."""
    dist = _launch(tmp_path, tiny_llama, instruct_data, mode, 4, 2, method,
                   context_parallel_dim=2, **_method(method))  # fmt: skip
    _assert_same(references(mode), dist)


@pytest.mark.parametrize(
    ("keys", "world", "message"),
    [
        ({"context_parallel_dim": 3}, 2, "context_parallel_dim=3 does not divide the world size"),
        (
            {"context_parallel_dim": 2, "tensor_parallel_dim": 2},
            6,
            "tensor_parallel_dim=2 x context_parallel_dim=2 does not divide the world size 6",
        ),
        ({"context_parallel_dim": 2, "data_parallel_shard_dim": 2}, 2, "does not match"),
        ({"context_parallel_dim": 0}, 2, "context_parallel_dim=0"),
        (
            {"context_parallel_dim": 2, "tokenizer.max_seq_len": 250},
            2,
            "max_seq_len=250 is not divisible by 2 x context_parallel_dim=4",
        ),
        (
            {"context_parallel_dim": 2, "context_parallel_rotate_method": "alltoall"},
            2,
            "context_parallel_rotate_method='alltoall': tunesmith does not run torch ring",
        ),
        (
            {"context_parallel_dim": 2, "context_parallel_method": "ring"},
            2,
            "context_parallel_method='ring': choose one of auto, ulysses, allgather",
        ),
        (
            {
                "context_parallel_dim": 2,
                "context_parallel_method": "ulysses",
                "context_parallel_rotate_method": "allgather",
            },
            2,
            "remove one of the two keys",
        ),
        (  # 4 query heads do not split 3 ways
            {
                "context_parallel_dim": 3,
                "context_parallel_method": "ulysses",
                "tokenizer.max_seq_len": 252,
            },
            3,
            "context_parallel_method=ulysses: num_heads=4 is not divisible by context_parallel",
        ),
        (  # 4 query heads: 2 per TP rank, which do not split 4 ways
            {
                "context_parallel_dim": 4,
                "tensor_parallel_dim": 2,
                "context_parallel_method": "ulysses",
            },
            8,
            "num_heads=2 per tensor-parallel rank is not divisible by context_parallel_dim=4",
        ),
        (
            {"context_parallel_dim": 2, "run_val_every_n_steps": 1, "dataset_val": {"a": 1}},
            2,
            "does not run the validation pass",
        ),
    ],
)
def test_bad_context_parallel_layouts_are_config_errors(
    keys: dict[str, Any], world: int, message: str, tiny_llama: Path, instruct_data: Path
) -> None:
    """Checked by ``parallel_layout`` before any weights load: one line naming the key."""
    from tunesmith.config import ConfigError
    from tunesmith.recipes._parallel_setup import parallel_layout

    cfg = OmegaConf.create(base_config(Path("/unused"), tiny_llama, instruct_data, **keys))
    with pytest.raises(ConfigError, match=message) as err:
        parallel_layout(cfg, world, torch.device("cpu"), context_parallel=True)
    assert "\n" not in str(err.value)


def test_sliding_window_models_are_refused() -> None:
    """Sliding-window (and chunked) layers build their masks from local positions inside the
    decoder: context parallelism refuses them rather than train on a wrong mask."""
    from tunesmith.models.builder import build_decoder
    from tunesmith.models.spec import ModelSpec
    from tunesmith.training.context_parallel import check_context_parallel_model

    spec = ModelSpec(
        family="MISTRAL", vocab_size=64, num_layers=1, num_heads=2, num_kv_heads=1,
        embed_dim=16, intermediate_dim=32, max_seq_len=32, sliding_window=8,
    )  # fmt: skip
    with torch.device("meta"):
        why = check_context_parallel_model(build_decoder(spec))
    assert why is not None and "sliding-window" in why


@pytest.mark.slow  # ~30 s: two interpreters start before the error
def test_cp_not_dividing_world_is_one_line_before_weights(
    tiny_llama: Path, instruct_data: Path, tmp_path: Path
) -> None:
    """context_parallel_dim=3 on 2 processes: one ``error:`` line naming the key, exit 2."""
    cfg = base_config(tmp_path / "out", tiny_llama, instruct_data, context_parallel_dim=3)
    proc, errors = _run_two_ranks(cfg, tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(errors) == 1 and "context_parallel_dim=3" in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
@METHODS
def test_packed_context_parallel_matches_one_process(
    method: str, tiny_llama: Path, instruct_data: Path, tmp_path: Path
) -> None:
    """Packed documents (max_seq_len 256 per pack): the one-process run attends per document
    (unpadded); cp=2 shards each pack and its block-causal mask (allgather) or attends per
    document over the whole pack, heads split (ulysses); same losses and weights."""
    packed = {"dataset.packed": True}
    ref = tmp_path / "ref"
    ref.mkdir()
    cfg = base_config(ref / "single", tiny_llama, instruct_data, batch_size=2,
                      **_over("lora"), **packed)  # fmt: skip
    _run(["run", "finetune", "--config", str(_write(cfg, ref / "single.yaml"))], ref)
    dist = _launch(tmp_path / "cp", tiny_llama, instruct_data, "lora", 2, 2, method,
                   context_parallel_dim=2, **packed, **_method(method))  # fmt: skip
    _assert_same(ref / "single", dist)


@pytest.mark.slow
@METHODS
def test_tensor_x_context_parallel_matches_one_process(
    method: str, references, tiny_llama: Path, instruct_data: Path, tmp_path: Path
) -> None:
    """CP 2 x TP 2 on 4 ranks (no data parallelism: all read the batch of 4): heads split by
    TP, every sequence by CP; LoRA. Ulysses: 2 query heads and 1 key/value head per TP rank,
    so each cp rank gets one query head and a copy of the key/value head."""
    dist = _launch(tmp_path, tiny_llama, instruct_data, "lora", 4, 4, method,
                   context_parallel_dim=2, tensor_parallel_dim=2, **_method(method))  # fmt: skip
    _assert_same(references("lora"), dist)


@pytest.mark.slow  # ~30 s: two interpreters start before the error
def test_ulysses_heads_not_dividing_is_one_line_before_weights(
    instruct_data: Path, tmp_path: Path
) -> None:
    """context_parallel_method=ulysses with 3 key/value heads on 2 ranks: one ``error:`` line
    naming the key, exit 2, before any weights load (the model folder has only its config)."""
    import json

    model_dir = tmp_path / "config_only"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 512,
        "hidden_size": 96, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 6, "num_key_value_heads": 3, "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
    }))  # fmt: skip
    cfg = base_config(tmp_path / "out", model_dir, instruct_data, context_parallel_dim=2,
                      context_parallel_method="ulysses")  # fmt: skip
    proc, errors = _run_two_ranks(cfg, tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "context_parallel_method=ulysses: num_kv_heads=3 neither divides" in errors[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("recipe", ["dpo", "knowledge_distillation"])
def test_recipes_without_context_parallel_refuse_it(
    recipe: str, tiny_llama: Path, instruct_data: Path
) -> None:
    """DPO and distillation do not split sequences: context_parallel_dim > 1 there would have
    each cp rank train the whole sequence while FSDP2 sums their gradients, so the layout
    they ask for refuses it in one line, before any weights load."""
    from tunesmith.config import ConfigError
    from tunesmith.recipes._parallel_setup import parallel_layout

    cfg = OmegaConf.create(
        base_config(Path("/unused"), tiny_llama, instruct_data, context_parallel_dim=2)
    )
    with pytest.raises(ConfigError, match="does not split sequences") as err:
        parallel_layout(cfg, 2, torch.device("cpu"))
    assert "\n" not in str(err.value)
    source = (Path(__file__).parents[2] / "src/tunesmith/recipes" / f"{recipe}.py").read_text()
    assert "parallel_layout(cfg, world_size, device)" in source  # the default: refused


def _run_two_ranks(cfg: dict, tmp_path: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    """``tunesmith run --nproc_per_node 2 finetune`` on ``cfg``: the process and its
    ``error:`` lines."""
    config = str(_write(cfg, tmp_path / "bad.yaml"))
    proc = subprocess.run(
        [*TUNESMITH, "run", "--nproc_per_node", "2", "finetune", "--config", config],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc, [line for line in proc.stderr.splitlines() if line.startswith("error:")]
