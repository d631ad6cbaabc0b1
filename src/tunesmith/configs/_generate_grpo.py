"""The bundled LoRA GRPO configs (recipe ``grpo``): GSM8K prompts, math-answer and think/answer
format rewards, TRL's clipped GRPO loss with a KL to the base model (adapters off).

``_generate.render_all`` includes them; run ``python -m tunesmith.configs._generate`` after an
edit here. Model, tokenizer and checkpointer blocks come from the finetune table's sizes.
"""

from __future__ import annotations

from tunesmith.configs._generate import (
    SIZES,
    Size,
    _checkpointer_block,
    _ckpt_dir,
    _model_block,
    _tokenizer_block,
)

__all__ = ["GRPO_CONFIGS", "grpo_config", "render_grpo"]

GRPO_CONFIGS: list[tuple[str, str]] = [
    ("llama3_2", "1B"),
    ("llama3_2", "3B"),
    ("qwen2_5", "1.5B"),
    ("qwen2_5", "3B"),
    ("qwen3", "1.7B"),
]


def grpo_config(s: Size) -> str:
    """Text of ``<family>/<size>_lora_grpo.yaml``."""
    name = f"{s.family}/{s.size}_lora_grpo"
    out = f"/tmp/tunesmith/{s.family}_{s.size.replace('.', '_')}/lora_grpo"
    text = (
        "# recipe: grpo\n"
        f"# LoRA GRPO of {s.hub_id} ({s.family} {s.size}) on GSM8K: {8} samples per prompt,\n"
        "# rewarded for a correct final answer (math-verify when installed) and for the\n"
        "# <think>...</think> <answer>...</answer> format; the KL reference is the base model\n"
        "# (adapters off, no second copy). One device, or N with FSDP2.\n"
        "#\n"
        "# Get the weights first:\n"
        f"#   tunesmith download {s.hub_id} --output-dir {_ckpt_dir(s)}\n"
        "#\n"
        f"#   tunesmith run grpo --config {name}\n"
        f"#   tunesmith run --nproc_per_node 4 grpo --config {name}\n"
        "# Override any key on the command line, e.g. checkpointer.checkpoint_dir=<DIR>.\n\n"
        f"output_dir: {out} # /tmp may be deleted by your system. Change it to your preference.\n\n"
    )
    text += "# Model\n" + _model_block(s, "lora") + "\n"
    tokenizer = _tokenizer_block(s).replace("max_seq_len: null", "max_seq_len: 1024")
    text += "# Tokenizer\n" + tokenizer + "\n"
    text += "# Checkpointer\n" + _checkpointer_block(s)
    text += "resume_from_checkpoint: False\nsave_adapter_weights_only: False\n"
    text += (
        "\n# Prompts and rewards\n"
        "dataset:\n"
        "  _component_: tunesmith.datasets.gsm8k_dataset\n"
        "seed: null\nshuffle: True\n"
        "reward_functions:\n"
        "  - _component_: tunesmith.rlhf.rewards.FormattedMathCorrectnessReward\n"
        "    answer_tag: answer\n    positive_reward: 10.0\n    negative_reward: 0.0\n"
        "  - _component_: tunesmith.rlhf.rewards.ThinkingAnswerFormattingReward\n"
        "    think_tag: think\n    answer_tag: answer\n"
        "    positive_reward: 1.0\n    negative_reward: 0.0\n\n"
        "# Rollouts: batch_size prompts per device, grpo_samples completions each\n"
        "batch_size: 4\n"
        "grpo_samples: 8\n"
        "forward_batch_size: 1  # prompts per generation call and per training micro-batch\n"
        "max_generated_tokens: 512\n"
        "temperature: 1.0\ntop_k: null\n"
        "scale_rewards: group  # group | batch | none\n\n"
        "# Optimisation: ppo_epochs optimizer steps per rollout batch\n"
        "ppo_epochs: 1\n"
        "num_steps: 500\n"
        "epochs: 1\n"
        "optimizer:\n  _component_: torch.optim.AdamW\n  fused: True\n  weight_decay: 0.0\n"
        "  lr: 3e-5\n"
        "lr_scheduler:\n"
        "  _component_: tunesmith.training.lr_schedulers.get_cosine_schedule_with_warmup\n"
        "  num_warmup_steps: 10\n"
        "loss:\n"
        "  _component_: tunesmith.rlhf.grpo.GRPOPolicyLoss\n"
        "  loss_type: grpo  # grpo | dr_grpo | dapo | bnpo | gspo\n"
        "  epsilon: 0.2\n  beta: 0.04\n"
        "clip_grad_norm: 1.0\n"
        "save_every_n_steps: 100\n"
        "compile: False\n\n"
        "# Logging\n"
        "metric_logger:\n"
        "  _component_: tunesmith.training.metric_logging.DiskLogger\n"
        "  log_dir: ${output_dir}/logs\n"
        "log_every_n_steps: 1\nlog_peak_memory_stats: True\n\n"
        "# Environment\ndevice: cuda\ndtype: bf16\n\n"
        "# Memory management\n"
        "enable_activation_checkpointing: True  # True reduces memory\n"
    )
    return text


def render_grpo() -> dict[str, str]:
    """Every LoRA GRPO config as ``{relative path: text}``."""
    out = {}
    for family, size in GRPO_CONFIGS:
        s = next(x for x in SIZES if x.family == family and x.size == size)
        out[f"{family}/{size}_lora_grpo.yaml"] = grpo_config(s)
    return out
