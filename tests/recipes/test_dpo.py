"""The dpo recipe on a tiny random Llama: LoRA and full DPO learn a preference from log(2),
the LoRA adapter loads in PEFT, torchtune-style configs run through the CLI, and wrong
configs fail naming the key or column."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from tests.recipes.conftest import HERE, LORA, base_config
from tunesmith.config import ConfigError

REPO = HERE.parents[1]
STEPS = 15
WORDS = ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "ocean", "robot", "sugar",
         "maple", "crane", "delta", "ember", "fable", "giant"]  # fmt: skip


def write_preference_data(path: Path, n: int = 128, drop: str | None = None) -> Path:
    """Rows ``{prompt, chosen, rejected}``: the chosen answer is the word reversed and upper-cased,
    the rejected one repeats the word (``drop`` leaves a column out)."""
    rows = []
    for i in range(n):
        w = WORDS[i % len(WORDS)] + WORDS[(i * 7) % len(WORDS)][: 1 + i % 3]
        row = {"question": f"Reverse and shout: {w}", "response_j": w[::-1].upper(),
               "response_k": w}  # fmt: skip
        if drop:
            del row[drop]
        rows.append(row)
    path.write_text(json.dumps(rows))
    return path


@pytest.fixture(scope="session")
def preference_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_preference_data(tmp_path_factory.mktemp("pref") / "pairs.json")


def dpo_config(out: Path, model_dir: Path, data: Path, **over: Any) -> dict[str, Any]:
    """torchtune's DPO keys (torchtune.* component names), pointing at tiny local files."""
    over = {"max_steps_per_epoch": STEPS, **over}
    cfg = base_config(out, model_dir, data, **over)
    cfg["dataset"] = {
        "_component_": "torchtune.datasets.stack_exchange_paired_dataset",
        "source": "json",
        "data_files": str(data),
        "split": "train",
    }
    cfg["loss"] = {"_component_": "torchtune.rlhf.loss.DPOLoss", "beta": 0.1}
    cfg["checkpointer"]["_component_"] = "torchtune.training.FullModelHFCheckpointer"
    for key, value in over.items():  # overrides of the replaced nodes win
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return cfg


def read_metrics(out: Path) -> dict[str, list[float]]:
    """``{metric: values by step}`` from the DiskLogger's JSONL."""
    found: dict[str, list[float]] = {}
    for line in (out / "logs" / "log.jsonl").read_text().splitlines():
        for k, v in json.loads(line).items():
            if k not in ("step", "time"):
                found.setdefault(k, []).append(v)
    return found


@pytest.fixture
def run_dpo(tiny_llama: Path, preference_data: Path, tmp_path: Path) -> Callable[..., Path]:
    from tunesmith.recipes.dpo import recipe_main

    def run(name: str = "run", **over: Any) -> Path:
        out = tmp_path / name
        recipe_main(OmegaConf.create(dpo_config(out, tiny_llama, preference_data, **over)))
        return out

    return run


def assert_prefers(out: Path) -> dict[str, list[float]]:
    m = read_metrics(out)
    losses, acc = m["loss"], m["rewards/accuracies"]
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at step 1
    assert acc[0] == 0.0 and m["rewards/margins"][0] == pytest.approx(0.0, abs=1e-6)
    assert sum(losses[-3:]) / 3 < 0.6 * math.log(2), losses
    assert sum(acc[-3:]) / 3 >= 0.9, acc
    assert m["rewards/margins"][-1] > 0
    for key in ("rewards/chosen", "rewards/rejected", "log_probs/chosen", "log_probs/rejected"):
        assert len(m[key]) == STEPS, key
    return m


def test_cli_lora_dpo_learns_and_saves_peft_adapter(
    tiny_llama: Path, preference_data: Path, tmp_path: Path
) -> None:
    """``tunesmith run lora_dpo_single_device --config <tiny yaml>`` (torchtune's recipe name and
    keys): the loss falls from log(2), accuracies rise, and the adapter loads in PEFT."""
    import os

    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    out = tmp_path / "out"
    cfg = dpo_config(out, tiny_llama, preference_data, **{"optimizer.lr": 1e-2},
                     **{f"model.{k}": v for k, v in LORA.items()})  # fmt: skip
    path = tmp_path / "tiny_lora_dpo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "run", "lora_dpo_single_device", "--config",
         str(path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert_prefers(out)
    tokens = torch.tensor([[257, *b"user: Reverse and shout: apple", 10]])
    merged = transformers.LlamaForCausalLM.from_pretrained(out / "epoch_1").eval()
    base = transformers.LlamaForCausalLM.from_pretrained(tiny_llama).eval()
    with torch.no_grad():
        before = base(tokens).logits
        adapted = peft.PeftModel.from_pretrained(base, out / "epoch_1" / "adapter").eval()
        ref = adapted(tokens).logits
        assert (merged(tokens).logits - ref).abs().max() <= 1e-4
        assert (before - ref).abs().max() > 1e-3  # the adapter changed the model


def test_full_dpo_learns(run_dpo) -> None:
    out = run_dpo(**{"optimizer.lr": 1e-3})
    assert_prefers(out)
    assert (out / "epoch_1" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "loss, lora",
    [({"_component_": "torchtune.rlhf.loss.RSOLoss", "gamma": 0.1}, True),
     ({"_component_": "tunesmith.rlhf.loss.IPOLoss", "tau": 0.1}, True),
     ({"_component_": "tunesmith.rlhf.loss.SimPOLoss"}, True),
     ({"_component_": "tunesmith.rlhf.loss.SimPOLoss"}, False)],
)  # fmt: skip
def test_other_preference_losses_learn(run_dpo, loss: dict, lora: bool) -> None:
    """RSO, IPO and reference-free SimPO (no reference model, LoRA or full) raise the margin."""
    over = {f"model.{k}": v for k, v in LORA.items()} if lora else {}
    lr = 1e-2 if lora else 1e-3
    out = run_dpo(loss=loss, max_steps_per_epoch=8, **{"optimizer.lr": lr}, **over)
    m = read_metrics(out)
    assert len(m["loss"]) == 8 and m["loss"][-1] < m["loss"][0], m["loss"]
    assert m["rewards/margins"][-1] > m["rewards/margins"][0]


def test_missing_column_names_it(tiny_llama: Path, tmp_path: Path) -> None:
    from tunesmith.recipes.dpo import recipe_main

    data = write_preference_data(tmp_path / "bad.json", n=8, drop="response_k")
    cfg = dpo_config(tmp_path / "out", tiny_llama, data)
    with pytest.raises(ValueError, match="response_k") as err:
        recipe_main(OmegaConf.create(cfg))
    assert "row 0" in str(err.value)


def test_wrong_dataset_or_loss_names_the_key(
    tiny_llama: Path, preference_data: Path, instruct_data: Path, tmp_path: Path
) -> None:
    from tunesmith.recipes.dpo import recipe_main

    cfg = dpo_config(tmp_path / "a", tiny_llama, preference_data)
    cfg["loss"] = {"_component_": "torchtune.modules.loss.LinearCrossEntropyLoss"}
    with pytest.raises(ConfigError, match="loss._component_"):
        recipe_main(OmegaConf.create(cfg))
    sft = base_config(tmp_path / "b", tiny_llama, instruct_data)["dataset"]
    cfg = dpo_config(tmp_path / "b", tiny_llama, preference_data, dataset=sft)
    with pytest.raises(ConfigError, match="dataset._component_.*not preference pairs"):
        recipe_main(OmegaConf.create(cfg))


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True])
def test_resume_continues_the_same_curve(run_dpo, lora: bool) -> None:
    """Cut after step 3's intermediate checkpoint and resumed == one uninterrupted run (the full
    DPO reference stays the initial weights, not the resumed ones)."""
    import shutil

    over: dict[str, Any] = {"max_steps_per_epoch": 6, "save_every_n_steps": 3}
    if lora:
        over.update({f"model.{k}": v for k, v in LORA.items()})
    whole = read_metrics(run_dpo("whole", **over))
    out = run_dpo("cut", **over)
    shutil.rmtree(out / "epoch_1")
    (out / "logs" / "log.jsonl").unlink()
    run_dpo("cut", resume_from_checkpoint=True, **over)
    again = read_metrics(out)
    for key in ("loss", "rewards/margins"):
        assert again[key] == pytest.approx(whole[key][3:], abs=1e-5), key


@pytest.mark.slow
@pytest.mark.parametrize(
    ("lora", "tp"),
    [(False, 1), (True, 1), (False, 2), (True, 2)],
    ids=["fsdp2-full", "fsdp2-lora", "tp2-full", "tp2-lora"],
)
def test_torchrun_two_processes_match_single(
    tiny_llama: Path, preference_data: Path, tmp_path: Path, lora: bool, tp: int
) -> None:
    """2 ranks x batch 2 (FSDP2, log-probs from logits) == 1 process x batch 4 (from hidden
    states): the same metrics every step. With ``tensor_parallel_dim=2`` both ranks read the
    whole batch of 4; policy and reference (full DPO) are split by heads / columns / vocab."""
    import os

    over: dict[str, Any] = {"max_steps_per_epoch": 3, "shuffle": False}
    if lora:
        over.update({f"model.{k}": v for k, v in LORA.items()})
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO / "src"), env.get("PYTHONPATH", "")])
    for name, nproc, batch in (("single", 1, 4), ("dist", 2, 4 if tp > 1 else 2)):
        if name == "dist" and tp > 1:
            over["tensor_parallel_dim"] = tp
        cfg = dpo_config(tmp_path / name, tiny_llama, preference_data, batch_size=batch, **over)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        launch = ["--nproc_per_node", str(nproc)] if nproc > 1 else []
        proc = subprocess.run(
            [sys.executable, "-m", "tunesmith.cli", "run", *launch, "dpo", "--config", str(path)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    single, dist = read_metrics(tmp_path / "single"), read_metrics(tmp_path / "dist")
    for key in ("loss", "rewards/chosen", "rewards/rejected", "log_probs/chosen"):
        assert dist[key] == pytest.approx(single[key], rel=1e-4, abs=1e-4), key


PEER_CONFIGS = (
    Path.home() / ".cache/tunesmith-bench/peer-venv/lib/python3.11/site-packages/recipes/configs"
)


@pytest.mark.parametrize("source", ["bundled", pytest.param("torchtune", marks=pytest.mark.slow)])
def test_torchtune_dpo_config_runs_unchanged(assets: Path, tmp_path: Path, source: str) -> None:
    """llama3_1/8B_lora_dpo_single_device (the bundled twin, and torchtune 0.6.1's own file where
    installed) on the StackExchange sample; overridden: paths, device, step budget, batch size,
    and the model size (a 2-layer Llama instead of the 8B download)."""
    import os

    from tests.recipes._recipe_toys import write_tiny_llama

    config = "llama3_1/8B_lora_dpo_single_device"
    if source == "torchtune":
        if not (PEER_CONFIGS / f"{config}.yaml").is_file():
            pytest.skip("torchtune 0.6.1 peer venv not installed")
        config = str(PEER_CONFIGS / f"{config}.yaml")
    model_dir = write_tiny_llama(tmp_path / "llama_tiny", vocab_size=128256, tied=True)
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "run", "lora_dpo_single_device", "--config", config,
         f"output_dir={out}", "model._component_=tunesmith.models.build_from_hf",
         f"+model.checkpoint_dir_or_config={model_dir}",
         f"tokenizer.path={assets / 'torchtune_tests' / 'tiktoken_small.model'}",
         "tokenizer.max_seq_len=512", f"checkpointer.checkpoint_dir={model_dir}",
         "checkpointer.checkpoint_files=[model.safetensors]", "+dataset.source=json",
         f"+dataset.data_files={assets / 'torchtune_tests' / 'stack_exchange_paired_tiny.json'}",
         "device=cpu", "max_steps_per_epoch=2", "batch_size=2", "gradient_accumulation_steps=1",
         "+metric_logger.filename=log.jsonl"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    # the 21 pairs whose prompt alone fills 512 tokens train on nothing: skipped, and said so
    assert "skipped 21 of 25 pairs with no trained token" in proc.stderr
    losses = read_metrics(out)["loss"]
    assert len(losses) == 2 and losses[0] == pytest.approx(math.log(2), abs=1e-3)
    assert (out / "epoch_1" / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_fp16_lora_dpo_learns_with_loss_scaling(run_dpo) -> None:
    """dtype=fp16: fp32 policy weights, fp16 autocast, dynamic loss scaling (issue 18.7)."""
    over = {f"model.{k}": v for k, v in LORA.items()}
    out = run_dpo(dtype="fp16", max_steps_per_epoch=8, **{"optimizer.lr": 1e-2}, **over)
    m = read_metrics(out)
    assert len(m["loss"]) == 8 and all(math.isfinite(x) for x in m["loss"])
    assert m["loss"][-1] < m["loss"][0] and m["rewards/margins"][-1] > 0
