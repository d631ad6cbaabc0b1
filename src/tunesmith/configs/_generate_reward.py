"""The bundled reward-model configs (recipe ``reward_model``): Bradley-Terry training of a
one-output classifier head on preference pairs, full or LoRA.

``_generate.render_all`` includes them; run ``python -m tunesmith.configs._generate`` after an
edit here. Model sizes, tokenizers and checkpoint files come from the finetune table.
"""

from __future__ import annotations

from tunesmith.configs._generate import (
    SIZES,
    Size,
    _checkpointer_block,
    _ckpt_dir,
    _tokenizer_block,
)

__all__ = ["REWARD_CONFIGS", "reward_config", "render_reward"]

# (family, size, variant): variant "reward_model" (full) or "lora_reward_model"
REWARD_CONFIGS: list[tuple[str, str, str]] = [
    ("llama3_2", "1B", "reward_model"),
    ("llama3_2", "1B", "lora_reward_model"),
    ("qwen2_5", "0.5B", "reward_model"),
    ("qwen2_5", "0.5B", "lora_reward_model"),
]


def _model_block(s: Size, lora: bool) -> str:
    builder = (s.lora_builder or f"lora_{s.builder}") if lora else s.builder
    lines = [
        "model:",
        "  _component_: tunesmith.modules.classifier_model",
        "  num_classes: 1  # one scalar reward",
        f"  base_model_path: tunesmith.models.{s.family}.{builder}",
    ]
    if lora:
        lines += [
            "  lora_attn_modules: ['q_proj', 'v_proj', 'output_proj']",
            "  apply_lora_to_mlp: True",
            f"  lora_rank: {s.lora_rank}  # higher increases accuracy and memory",
            f"  lora_alpha: {2 * s.lora_rank}  # usually alpha=2*rank",
            "  lora_dropout: 0.0",
        ]
    return "\n".join(lines) + "\n"


def reward_config(s: Size, variant: str) -> str:
    """Text of ``<family>/<size>_<variant>.yaml``."""
    name = f"{s.family}/{s.size}_{variant}"
    lora = variant.startswith("lora")
    method = "LoRA" if lora else "Full"
    out = f"/tmp/tunesmith/{s.family}_{s.size.replace('.', '_')}/{variant}"
    checkpointer = _checkpointer_block(s).replace(
        f"model_type: {s.model_type}", "model_type: REWARD"
    )
    text = (
        "# recipe: reward_model\n"
        f"# {method} reward-model training of {s.hub_id} ({s.family} {s.size}): a one-output\n"
        "# head (Bradley-Terry loss) on StackExchange preference pairs; saved as a Hugging Face\n"
        "# ...ForSequenceClassification checkpoint. The LM head is replaced by a new reward head.\n"
        "#\n"
        "# Get the weights first:\n"
        f"#   tunesmith download {s.hub_id} --output-dir {_ckpt_dir(s)}\n"
        "#\n"
        "# Launch (one device; add --nproc_per_node N for FSDP2):\n"
        f"#   tunesmith run reward_model --config {name}\n"
        "# Override any key on the command line, e.g. checkpointer.checkpoint_dir=<DIR>.\n\n"
        f"output_dir: {out} # /tmp may be deleted by your system. Change it to your preference.\n\n"
        "# Model\n" + _model_block(s, lora) + "\n"
        "# Tokenizer\n"
        + _tokenizer_block(s).replace("max_seq_len: null", "max_seq_len: 1024")
        + "\n# Checkpointer (REWARD: the head is read and written as score.weight)\n"
        + checkpointer
        + "resume_from_checkpoint: False\n"
        + ("save_adapter_weights_only: False\n" if lora else "")
        + "\n# Dataset and sampler\n"
        "dataset:\n"
        "  _component_: tunesmith.datasets.stack_exchange_paired_dataset\n"
        "seed: null\nshuffle: True\nbatch_size: 4\n\n"
        "# Optimizer and scheduler\n"
        "optimizer:\n  _component_: torch.optim.AdamW\n  fused: True\n  weight_decay: 0.01\n"
        f"  lr: {'2e-4' if lora else '1e-5'}\n"
        "lr_scheduler:\n"
        "  _component_: tunesmith.training.lr_schedulers.get_cosine_schedule_with_warmup\n"
        "  num_warmup_steps: 50\n\n"
        "loss:\n"
        "  _component_: tunesmith.rlhf.reward_loss.BradleyTerryLoss\n"
        "  center_rewards_coefficient: null  # e.g. 0.01 keeps the rewards centred at 0\n\n"
        "# Training\n"
        "epochs: 1\n"
        "max_steps_per_epoch: 1000\n"
        "gradient_accumulation_steps: 8  # Use to increase effective batch size\n"
        "clip_grad_norm: 1.0\n"
        "compile: False  # torch.compile the model + loss, True increases speed + decreases memory\n\n"
        "# Logging\n"
        "metric_logger:\n"
        "  _component_: tunesmith.training.metric_logging.DiskLogger\n"
        "  log_dir: ${output_dir}/logs\n"
        "log_every_n_steps: 1\nlog_peak_memory_stats: True\n\n"
        "# Environment\ndevice: cuda\ndtype: bf16\n\n"
        "# Memory management\n"
        "enable_activation_checkpointing: True  # True reduces memory\n"
        "enable_activation_offloading: False  # True reduces memory\n"
    )
    return text


def render_reward() -> dict[str, str]:
    """Every reward-model config as ``{relative path: text}``."""
    out = {}
    for family, size, variant in REWARD_CONFIGS:
        s = next(x for x in SIZES if x.family == family and x.size == size)
        out[f"{family}/{size}_{variant}.yaml"] = reward_config(s, variant)
    return out
