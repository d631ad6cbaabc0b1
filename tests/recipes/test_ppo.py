"""The ppo recipe on tiny local models: a random 2-layer Llama policy, and a hand-built Llama
classifier whose score rises with the share of "low" tokens (ids below 160) in the sequence
(uniform attention over the context, a fixed linear head), so PPO has something easy to
learn."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

from tests.recipes.conftest import HERE
from tests.recipes.test_dpo import read_metrics
from tunesmith.config import ConfigError

REPO = HERE.parents[1]
LOW = 160  # tokens below this id raise the score


def write_toy_reward_model(folder: Path, vocab_size: int = 320, dim: int = 32) -> Path:
    """``LlamaForSequenceClassification`` (1 label): zero q/k projections make attention a
    uniform average over the context, so the last token's score is a monotone function of the
    fraction of tokens below ``LOW`` in the sequence."""
    import torch
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=dim, intermediate_size=2 * dim, num_hidden_layers=1,
        num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=512,
        num_labels=1, pad_token_id=256,
    )  # fmt: skip
    model = transformers.LlamaForSequenceClassification(config)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        emb = model.model.embed_tokens.weight
        emb[LOW:, 1] = 1.0  # high tokens point along e1, low ones along e0
        emb[:LOW, 0] = 1.0
        layer = model.model.layers[0]
        layer.self_attn.v_proj.weight.copy_(torch.eye(dim))
        layer.self_attn.o_proj.weight.copy_(torch.eye(dim) * 10)  # the average dominates
        for norm in (layer.input_layernorm, layer.post_attention_layernorm, model.model.norm):
            norm.weight.fill_(1.0)
        model.score.weight[0, 0], model.score.weight[0, 1] = 1.0, -1.0
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def write_prompts(path: Path, n: int = 64) -> Path:
    words = ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "ocean"]
    rows = [{"prompt": f"{words[i % 8]} {words[(i * 3) % 8]}"[: 4 + i % 7]} for i in range(n)]
    path.write_text(json.dumps(rows))
    return path


@pytest.fixture(scope="session")
def toy_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.recipes._recipe_toys import write_tiny_llama

    root = tmp_path_factory.mktemp("ppo_toys")
    return {
        "policy": write_tiny_llama(root / "policy", hidden_size=32),
        "reward": write_toy_reward_model(root / "reward"),
        "data": write_prompts(root / "prompts.json"),
    }


def _ckpt(folder: Path, out: str, model_type: str) -> dict[str, Any]:
    return {"_component_": "torchtune.training.FullModelHFCheckpointer",
            "checkpoint_dir": str(folder), "checkpoint_files": ["model.safetensors"],
            "output_dir": out, "model_type": model_type}  # fmt: skip


def ppo_config(out: Path, files: dict[str, Path], **over: Any) -> dict[str, Any]:
    """torchtune's PPO keys on the toy files."""
    cfg: dict[str, Any] = {
        "output_dir": str(out),
        "tokenizer": {"_component_": "_recipe_toys.ByteChatTokenizer", "max_seq_len": 64},
        "dataset": {"_component_": "torchtune.datasets.text_completion_dataset",
                    "source": "json", "data_files": str(files["data"]), "split": "train",
                    "column": "prompt", "add_eos": False},  # fmt: skip
        "policy_model": {"_component_": "tunesmith.models.build_from_hf",
                         "checkpoint_dir_or_config": str(files["policy"])},  # fmt: skip
        "reward_and_value_model": {"_component_": "tunesmith.models.build_from_hf",
                                   "checkpoint_dir_or_config": str(files["reward"])},  # fmt: skip
        "checkpointer": _ckpt(files["policy"], "${output_dir}/policy", "LLAMA3"),
        "ref_policy_checkpointer": _ckpt(files["policy"], "${output_dir}/policy", "LLAMA3"),
        "value_checkpointer": _ckpt(files["reward"], "${output_dir}/value", "REWARD"),
        "reward_checkpointer": _ckpt(files["reward"], "${output_dir}/value", "REWARD"),
        "resume_from_checkpoint": False, "seed": 0, "shuffle": True, "device": "cpu",
        "batch_size": 8, "num_steps": 8 * 12, "ppo_epochs": 2, "ppo_batch_size": 4,
        "forward_batch_size": 4, "gradient_accumulation_steps": 1,
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 3e-3},
        "optimizer_in_bwd": False, "compile": False, "enable_activation_checkpointing": False,
        "enable_kv_cache": True, "dtype": "fp32", "max_generated_tokens": 8,
        "temperature": 1.0, "top_k": None, "min_response_length": None,
        "penalise_no_eos": False, "reward_penalty": -3, "stop_token_ids": None,
        "whiten_rewards": False, "gamma": 1.0, "lmbda": 0.95, "kl_coeff": 0.01,
        "loss": {"_component_": "torchtune.rlhf.loss.PPOLoss", "epsilon": 0.2,
                 "value_coeff": 0.1, "value_clip_range": 0.2},  # fmt: skip
        "metric_logger": {"_component_": "tunesmith.training.metric_logging.DiskLogger",
                          "log_dir": "${output_dir}/logs", "filename": "log.jsonl"},
        "log_every_n_steps": 1,
    }  # fmt: skip
    for key, value in over.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return cfg


def run_ppo(out: Path, files: dict[str, Path], **over: Any) -> dict[str, list[float]]:
    from tunesmith.recipes.ppo import recipe_main

    recipe_main(OmegaConf.create(ppo_config(out, files, **over)))
    return read_metrics(out)


def test_ppo_raises_the_toy_reward(toy_files: dict[str, Path], tmp_path: Path) -> None:
    m = run_ppo(tmp_path / "run", toy_files, num_steps=8 * 10)
    scores = m["scores"]
    assert len(scores) == 10 and all(math.isfinite(x) for x in m["loss"])
    assert sum(scores[-3:]) / 3 > sum(scores[:3]) / 3 + 0.3, scores
    for key in ("reward_std", "advantage_mean", "advantage_std", "kl", "clipfrac",
                "value_clipfrac", "entropy", "response_lengths", "fraction_truncated",
                "rollout_tokens_per_second", "training_tokens_per_second", "policy_loss",
                "value_loss", "approx_policy_kl"):  # fmt: skip
        assert len(m[key]) == 10, key
    assert all(0.0 <= x <= 1.0 for x in m["clipfrac"] + m["value_clipfrac"])
    assert (tmp_path / "run" / "value").is_dir() and any((tmp_path / "run" / "value").iterdir())
    if importlib.util.find_spec("matplotlib") is not None:  # the reward curve is drawn
        assert list((tmp_path / "run" / "logs").glob("*.png"))


@pytest.mark.slow
def test_resume_continues_the_same_curve(toy_files: dict[str, Path], tmp_path: Path) -> None:
    """Cut after step 3's intermediate checkpoint and resumed == one uninterrupted run: the
    sampling RNG, the minibatch shuffle, the optimizer and the value model all come back."""
    import shutil

    over: dict[str, Any] = {"num_steps": 8 * 6, "save_every_n_steps": 3}
    whole = run_ppo(tmp_path / "whole", toy_files, **over)
    out = tmp_path / "cut"
    run_ppo(out, toy_files, **over)
    for sub in ("policy", "value"):
        finals = [f for f in (out / sub).iterdir() if f.is_dir() and "step" not in f.name]
        assert finals, list((out / sub).iterdir())
        for f in finals:
            shutil.rmtree(f)
    (out / "logs" / "log.jsonl").unlink()
    again = run_ppo(out, toy_files, resume_from_checkpoint=True, **over)
    for key in ("loss", "scores", "kl", "value_loss"):
        assert again[key] == pytest.approx(whole[key][3:], abs=1e-5), key


@pytest.mark.slow
def test_two_processes_match_one(toy_files: dict[str, Path], tmp_path: Path) -> None:
    """2 ranks x batch 2 (FSDP2) == 1 process x batch 4, split into 2 backward batches: the same
    samples (per-row sampling RNG), global whitening and token means, so the same metrics."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO / "src"), env.get("PYTHONPATH", "")])
    for name, nproc, batch, accum in (("single", 1, 4, 2), ("dist", 2, 2, 1)):
        cfg = ppo_config(
            tmp_path / name, toy_files, batch_size=batch, ppo_batch_size=batch,
            forward_batch_size=1, gradient_accumulation_steps=accum, num_steps=12,
        )  # fmt: skip
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        launch = ["--nproc_per_node", str(nproc)] if nproc > 1 else []
        proc = subprocess.run(
            [sys.executable, "-m", "tunesmith.cli", "run", *launch, "ppo", "--config", str(path)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    single, dist = read_metrics(tmp_path / "single"), read_metrics(tmp_path / "dist")
    assert len(single["loss"]) == 3
    for key in ("loss", "scores", "kl", "policy_loss", "value_loss", "advantage_std", "entropy"):
        assert dist[key] == pytest.approx(single[key], rel=1e-4, abs=1e-4), key


TORCHTUNE_CONFIGS = (
    "mistral/7B_full_ppo_low_memory",
    "llama2/1B_full_ppo_low_memory_single_device",
)


@pytest.fixture(scope="session")
def llama2_vocab_toys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The toy policy and reward model with Llama 2's 32,000-token vocabulary."""
    from tests.recipes._recipe_toys import write_tiny_llama

    root = tmp_path_factory.mktemp("ppo_llama2_vocab")
    return {
        "policy": write_tiny_llama(root / "policy", vocab_size=32000, hidden_size=32),
        "reward": write_toy_reward_model(root / "reward", vocab_size=32000),
        "data": write_prompts(root / "prompts.json"),
    }


@pytest.mark.parametrize("name", TORCHTUNE_CONFIGS)
def test_torchtune_ppo_config_runs_unchanged(
    name: str, assets: Path, llama2_vocab_toys: dict[str, Path], tmp_path: Path
) -> None:
    """torchtune's PPO configs (bundled unchanged) through the CLI with the overrides torchtune's
    own PPO test used: the real Llama 2 tokenizer, local prompts and tiny checkpoints (model
    sizes), CPU/fp32, small batches, a plain AdamW instead of bitsandbytes."""
    from tunesmith.config import bundled_configs

    files = llama2_vocab_toys
    path = bundled_configs()[name].path
    policy = {"num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "embed_dim": 32,
              "max_seq_len": 512, "intermediate_dim": 64, "vocab_size": 32000}  # fmt: skip
    critic = {"num_layers": 1, "num_heads": 1, "num_kv_heads": 1, "embed_dim": 32,
              "max_seq_len": 512, "intermediate_dim": 64, "vocab_size": 32000}  # fmt: skip
    over = [
        f"output_dir={tmp_path / 'out'}", f"tokenizer.path={assets / 'tokenizers/llama2/tokenizer.model'}",
        "dataset.source=json", f"+dataset.data_files={files['data']}",
        "policy_model._component_=torchtune.models.llama2.llama2",
        *(f"{'+' if name.startswith('mistral') else ''}policy_model.{k}={v}" for k, v in policy.items()),
        *(f"reward_and_value_model.{k}={v}" for k, v in critic.items()),
        "checkpointer.model_type=LLAMA2", "ref_policy_checkpointer.model_type=LLAMA2",
        "device=cpu", "dtype=fp32", "batch_size=4", "forward_batch_size=4", "ppo_batch_size=4",
        "num_steps=8", "optimizer._component_=torch.optim.AdamW", "optimizer.lr=2e-5", "compile=False",
        "max_generated_tokens=12",
    ]  # fmt: skip
    for key, folder in (("checkpointer", "policy"), ("ref_policy_checkpointer", "policy"),
                        ("value_checkpointer", "reward"), ("reward_checkpointer", "reward")):  # fmt: skip
        over += [
            f"{key}.checkpoint_dir={files[folder]}",
            f"{key}.checkpoint_files=[model.safetensors]",
        ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "run", "ppo_full_finetune_single_device",
         "--config", str(path), *over],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    logs = (tmp_path / "out" / "logs").glob("*.jsonl")
    metrics = [json.loads(x) for f in logs for x in f.read_text().splitlines()]
    steps = [m for m in metrics if "scores" in m]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(steps) == 2 and len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert any((tmp_path / "out" / "value").iterdir())


@pytest.mark.parametrize(
    ("over", "key"),
    [
        ({"forward_batch_size": 3}, "forward_batch_size"),
        ({"ppo_batch_size": 3}, "ppo_batch_size"),
        ({"gradient_accumulation_steps": 3}, "gradient_accumulation_steps"),
        ({"optimizer_in_bwd": True, "gradient_accumulation_steps": 2}, "optimizer_in_bwd"),
        ({"num_steps": 4}, "num_steps"),
        ({"loss": {"_component_": "torchtune.rlhf.loss.DPOLoss"}}, "loss._component_"),
        ({"reward_checkpointer": None}, "reward_checkpointer"),
        ({"dtype": "fp16"}, "dtype"),
        ({"max_generated_tokens": 510}, "max_generated_tokens"),
    ],
)
def test_bad_settings_name_the_key(
    toy_files: dict[str, Path], tmp_path: Path, over: dict[str, Any], key: str
) -> None:
    from tunesmith.data import DataError
    from tunesmith.recipes.ppo import recipe_main

    cfg = ppo_config(tmp_path / "bad", toy_files)
    cfg.update(over)
    with pytest.raises((ConfigError, DataError)) as err:
        recipe_main(OmegaConf.create(cfg))
    assert err.value.key == key, str(err.value)
    assert "\n" not in str(err.value)


def test_a_language_model_as_reward_model_is_refused(
    toy_files: dict[str, Path], tmp_path: Path
) -> None:
    """The critic must be a 1-output classifier (num_classes=1, model_type REWARD)."""
    from tunesmith.recipes.ppo import recipe_main

    cfg = ppo_config(tmp_path / "bad", toy_files)
    cfg["reward_and_value_model"] = dict(cfg["policy_model"])
    for key in ("value_checkpointer", "reward_checkpointer"):
        cfg[key] = _ckpt(toy_files["policy"], "${output_dir}/value", "LLAMA3")
    with pytest.raises(ConfigError, match="num_classes=1"):
        recipe_main(OmegaConf.create(cfg))
