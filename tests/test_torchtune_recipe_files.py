"""torchtune 0.6.1's own single-device recipe files, unchanged, run by ``tunesmith run``.

``recipes/lora_finetune_single_device.py`` and ``recipes/full_finetune_single_device.py`` come
from the torchtune 0.6.1 wheel on PyPI (``tests/_torchtune_wheel.py``; torchtune itself is
never installed) and run with their own 0.6.1 configs (``llama3_2/1B_lora_single_device``,
``llama3_2/1B_qlora_single_device``, ``llama3_2/1B_full_single_device``) overridden on the command line to a tiny random Llama 3.2
(written by ``transformers``), the toy tiktoken tokenizer and 100 alpaca rows. Each run's
per-step losses (the DiskLogger's JSON lines) must equal those of tunesmith's own
``finetune`` recipe on the same config and overrides, within 1e-5 (fp32, CPU).

The LoRA runs share one starting adapter: torchtune's recipe draws fresh LoRA weights from the
global RNG while it builds the model on the device, tunesmith's from a generator seeded with
the run's seed (docs/coming-from-torchtune.md), so tunesmith's run is given the adapter
torchtune's recipe starts from (``checkpointer.adapter_checkpoint``, written by a run of the
recipe with ``lr=0``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests._torchtune_wheel import torchtune_061_recipes

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

TOL = 1e-5
MODEL = {"vocab_size": 2304, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
         "embed_dim": 64, "max_seq_len": 512, "intermediate_dim": 128}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_llama(assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random Llama 3.2-shaped HF checkpoint and the toy tiktoken tokenizer with Llama 3's
    special tokens placed after its ranks."""
    transformers = pytest.importorskip("transformers")
    import torch

    toy = assets / "torchtune_tests" / "tiktoken_small.model"
    if not toy.is_file():
        pytest.skip(f"toy tokenizer {toy} not in the shared assets")
    sys.path.insert(0, str(REPO / "benchmarks"))
    from _assets import special_tokens

    out = tmp_path_factory.mktemp("tiny_llama32")
    shutil.copy(toy, out / "tokenizer.model")
    ranks = sum(1 for line in toy.read_bytes().splitlines() if line.strip())
    ids = special_tokens(ranks)
    added = [{"id": i, "content": t, "special": True} for t, i in ids.items()]
    (out / "special_tokens.json").write_text(json.dumps({"added_tokens": added}))
    assert max(ids.values()) < MODEL["vocab_size"]
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=MODEL["vocab_size"],
        hidden_size=MODEL["embed_dim"],
        intermediate_size=MODEL["intermediate_dim"],
        num_hidden_layers=MODEL["num_layers"],
        num_attention_heads=MODEL["num_heads"],
        num_key_value_heads=MODEL["num_kv_heads"],
        max_position_embeddings=MODEL["max_seq_len"],
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        tie_word_embeddings=True,
        initializer_range=0.2,
        bos_token_id=ids["<|begin_of_text|>"],
        eos_token_id=ids["<|end_of_text|>"],
    )
    transformers.LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    return out


def _overrides(model_dir: Path, data: Path, out: Path, builder: str) -> list[str]:
    """Point a torchtune 0.6.1 Llama 3.2 1B config at the tiny local files (fp32, CPU)."""
    return [
        f"output_dir={out}",
        f"model._component_=torchtune.models.llama3_2.{builder}",
        *(f"+model.{k}={v}" for k, v in MODEL.items()),
        f"tokenizer.path={model_dir / 'tokenizer.model'}",
        f"+tokenizer.special_tokens_path={model_dir / 'special_tokens.json'}",
        "tokenizer.max_seq_len=256",
        f"checkpointer.checkpoint_dir={model_dir}",
        "+dataset.source=json",
        f"+dataset.data_files={data}",
        "+dataset.split=train",
        "seed=0",
        "batch_size=2",
        "device=cpu",
        "dtype=fp32",
        "log_peak_memory_stats=False",
    ]


def _run(recipe: str, config: Path, overrides: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    env.pop("TUNESMITH_NO_TORCHTUNE_COMPAT", None)
    cmd = [sys.executable, "-m", "tunesmith", "run", recipe, "--config", str(config), *overrides]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


def _losses(out: Path) -> list[float]:
    (log,) = (out / "logs").glob("log_*.jsonl")
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [row["loss"] for row in rows if "loss" in row]


def _assert_equal_losses(theirs: list[float], ours: list[float], steps: int) -> None:
    assert len(theirs) == len(ours) == steps, (theirs, ours)
    worst = max(abs(a - b) for a, b in zip(theirs, ours))
    assert worst <= TOL, f"torchtune recipe {theirs} vs tunesmith finetune {ours}"
    assert theirs[-1] < theirs[0] - 0.05, theirs  # the runs trained


@pytest.fixture(scope="module")
def recipes() -> Path:
    return torchtune_061_recipes()


@pytest.mark.parametrize(
    ("config_name", "extra"),
    [
        ("1B_lora_single_device", ()),
        ("1B_qlora_single_device", ("+model.quantize_base=True",)),  # NF4 base weights
    ],
)
def test_lora_recipe_file_matches_tunesmith_finetune(
    recipes: Path,
    tiny_llama: Path,
    assets: Path,
    tmp_path: Path,
    config_name: str,
    extra: tuple[str, ...],
) -> None:
    script = recipes / "lora_finetune_single_device.py"
    config = recipes / "configs" / "llama3_2" / f"{config_name}.yaml"
    data = assets / "torchtune_tests" / "alpaca_tiny.json"

    def over(out: Path) -> list[str]:
        return [
            *_overrides(tiny_llama, data, out, "lora_llama3_2"),
            *extra,
            "model.lora_rank=8",
            "model.lora_alpha=16",
            "optimizer.fused=False",
            "optimizer.lr=3e-3",
            "lr_scheduler.num_warmup_steps=1",
            "gradient_accumulation_steps=2",
            "max_steps_per_epoch=2",
            "epochs=2",  # an intermediate save (recipe state + the loader's state_dict)
        ]

    start = tmp_path / "start"  # the adapter torchtune's recipe starts from
    _run(str(script), config, [*over(start), "optimizer.lr=0", "epochs=1", "max_steps_per_epoch=1"])
    theirs, ours = tmp_path / "torchtune_recipe", tmp_path / "tunesmith"
    _run(str(script), config, over(theirs))
    adapter = start / "epoch_0" / "adapter"
    _run("finetune", config, [*over(ours), f"+checkpointer.adapter_checkpoint={adapter}"])
    _assert_equal_losses(_losses(theirs), _losses(ours), steps=4)
    # the recipe file saved what torchtune's checkpointer saves: weights, adapter, recipe state
    assert (theirs / "epoch_0" / "recipe_state.pt").is_file()
    assert (theirs / "epoch_1" / "adapter" / "adapter_model.safetensors").is_file()
    assert (theirs / "epoch_1" / "model.safetensors").is_file()


def test_full_recipe_file_matches_tunesmith_finetune(
    recipes: Path, tiny_llama: Path, assets: Path, tmp_path: Path
) -> None:
    script = recipes / "full_finetune_single_device.py"
    config = recipes / "configs" / "llama3_2" / "1B_full_single_device.yaml"
    data = assets / "torchtune_tests" / "alpaca_tiny.json"

    def over(out: Path, *extra: str) -> list[str]:
        return [
            *_overrides(tiny_llama, data, out, "llama3_2"),
            "optimizer._component_=torch.optim.AdamW",  # the config's is bitsandbytes' paged 8-bit
            "optimizer.lr=1e-3",
            "max_steps_per_epoch=2",
            "epochs=2",
            *extra,
        ]

    # gradient accumulation (scale_grads over the step's tokens) with a plain optimizer, on
    # packed data (padded_collate_packed: block-causal masks and per-document positions)
    plain = ("optimizer_in_bwd=False", "gradient_accumulation_steps=2", "dataset.packed=True")
    _run(str(script), config, over(tmp_path / "tt", *plain))
    _run("finetune", config, over(tmp_path / "ts", *plain))
    _assert_equal_losses(_losses(tmp_path / "tt"), _losses(tmp_path / "ts"), steps=4)
    assert (tmp_path / "tt" / "epoch_1" / "model.safetensors").is_file()
    # resume the recipe file after its first epoch (as if stopped during the second): the
    # checkpointer's recipe state, the optimizer and the loader's state_dict bring back the
    # same last two losses
    shutil.copytree(tmp_path / "tt", tmp_path / "tt_resume")
    shutil.rmtree(tmp_path / "tt_resume" / "epoch_1")
    shutil.rmtree(tmp_path / "tt_resume" / "logs")
    _run(
        str(script), config, [*over(tmp_path / "tt_resume", *plain), "resume_from_checkpoint=True"]
    )
    assert _losses(tmp_path / "tt_resume") == _losses(tmp_path / "tt")[2:]

    # the config's optimizer_in_bwd=True: per-parameter optimizers stepped in backward
    # (register_optim_in_bwd_hooks / create_optim_in_bwd_wrapper / get_lr of the wrapper).
    # torchtune 0.6.1's recipe steps them on token-summed gradients (it skips scale_grads in
    # that mode), tunesmith on the token mean, so only the first loss (before any update) is
    # the same number (docs/coming-from-torchtune.md).
    _run(str(script), config, over(tmp_path / "tt_bwd"))
    _run("finetune", config, over(tmp_path / "ts_bwd"))
    theirs, ours = _losses(tmp_path / "tt_bwd"), _losses(tmp_path / "ts_bwd")
    assert len(theirs) == len(ours) == 4
    assert abs(theirs[0] - ours[0]) <= TOL, (theirs, ours)
    assert theirs[-1] < theirs[0] - 0.05 and ours[-1] < ours[0] - 0.05, (theirs, ours)
    assert (tmp_path / "tt_bwd" / "epoch_0" / "recipe_state.pt").is_file()
