"""The bundled DPO configs (recipe ``dpo``): torchtune 0.6.1's DPO configs, same names and keys.

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

__all__ = ["DPO_CONFIGS", "dpo_config", "render_dpo"]

# (family, size, variant) for every torchtune 0.6.1 DPO config.
DPO_CONFIGS: list[tuple[str, str, str]] = [
    ("llama2", "7B", "lora_dpo"),
    ("llama2", "7B", "lora_dpo_single_device"),
    ("llama3_1", "8B", "full_dpo"),
    ("llama3_1", "8B", "lora_dpo"),
    ("llama3_1", "8B", "lora_dpo_single_device"),
]
# tunesmith's own: the KTO and ORPO losses of the dpo recipe, LoRA on one device.
PREFERENCE_LOSS_CONFIGS: list[tuple[str, str, str]] = [
    ("llama3_2", "1B", "lora_kto"),
    ("llama3_2", "1B", "lora_orpo"),
    ("qwen2_5", "1.5B", "lora_kto"),
    ("qwen2_5", "1.5B", "lora_orpo"),
]
_LOSSES = {  # variant -> (method, loss block)
    "kto": ("LoRA KTO", "  _component_: tunesmith.rlhf.loss.KTOLoss\n  beta: 0.1\n"
            "  desirable_weight: 1.0\n  undesirable_weight: 1.0\n"),
    "orpo": ("LoRA ORPO", "  _component_: tunesmith.rlhf.loss.ORPOLoss\n  beta: 0.1\n"),
}  # fmt: skip

_ALIAS = {
    "lora_dpo": "lora_dpo_distributed",
    "lora_dpo_single_device": "lora_dpo_single_device",
    "full_dpo": "full_dpo_distributed",
}


def dpo_config(s: Size, variant: str) -> str:
    """Text of ``<family>/<size>_<variant>.yaml`` for a DPO variant of ``_ALIAS``, or a
    ``lora_kto`` / ``lora_orpo`` one (one device; no torchtune twin)."""
    name = f"{s.family}/{s.size}_{variant}"
    alias = _ALIAS.get(variant)
    own = _LOSSES.get(variant.removeprefix("lora_"))
    full = variant.startswith("full")
    single = variant.endswith("single_device") or own is not None
    method = own[0] if own else "Full DPO" if full else "LoRA DPO"
    method += " on one device" if single else " on several devices (FSDP2)"
    launch = f"tunesmith run {'' if single else '--nproc_per_node 4 '}dpo --config {name}"
    data = "StackExchange preference pairs"
    twin = "torchtune's config of the same name." if own is None else "tunesmith's own config."
    if variant == "lora_kto":
        twin = "each pair split into a desirable and an undesirable row; " + twin
    out = f"/tmp/tunesmith/{s.family}_{s.size.replace('.', '_')}/{variant}"
    text = (
        "# recipe: dpo\n"
        f"# {method} of {s.hub_id} ({s.family} {s.size}) on {data};\n"
        f"# {twin}\n"
        "#\n"
        "# Get the weights first:\n"
        f"#   tunesmith download {s.hub_id} --output-dir {_ckpt_dir(s)}\n"
        "#\n"
        + (
            f"# Launch (torchtune's recipe name works too: tunesmith run {alias} --config {name}):\n"
            if alias
            else "# Launch:\n"
        )
        + f"#   {launch}\n"
        "# Override any key on the command line, e.g. checkpointer.checkpoint_dir=<DIR>.\n\n"
        f"output_dir: {out} # /tmp may be deleted by your system. Change it to your preference.\n\n"
    )
    text += "# Model\n" + _model_block(s, "full" if full else "lora") + "\n"
    tokenizer = _tokenizer_block(s).replace("max_seq_len: null", "max_seq_len: 1024")
    text += "# Tokenizer\n" + tokenizer + "\n"
    text += "# Checkpointer\n" + _checkpointer_block(s)
    text += "resume_from_checkpoint: False\n"
    if full:
        text += (
            "\n# The reference model: the initial weights (keep it pointing at them)\n"
            + _checkpointer_block(s).replace("checkpointer:", "ref_checkpointer:", 1)
        )
    else:
        text += "save_adapter_weights_only: False\n"
    text += (
        "\n# Dataset and sampler\n"
        "dataset:\n"
        "  _component_: tunesmith.datasets.stack_exchange_paired_dataset\n"
        "seed: null\nshuffle: True\nbatch_size: 4\n\n"
        "# Optimizer and scheduler\n"
        "optimizer:\n  _component_: torch.optim.AdamW\n  fused: True\n  weight_decay: 0.05\n"
        f"  lr: {'2e-5' if full else '5e-4'}\n"
        "lr_scheduler:\n"
        "  _component_: tunesmith.training.lr_schedulers.get_cosine_schedule_with_warmup\n"
        f"  num_warmup_steps: {20 if full else 100}\n\n"
        "loss:\n"
        + (
            own[1]
            if own
            else "  _component_: tunesmith.rlhf.loss.DPOLoss\n"
            f"  beta: {0.05 if full else 0.1}\n"
            "  label_smoothing: 0\n"
        )
        + "\n"
        "# Training\n"
        "epochs: 1\n"
        "max_steps_per_epoch: 1000\n"
        "gradient_accumulation_steps: 8  # Use to increase effective batch size\n"
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


def render_dpo() -> dict[str, str]:
    """Every DPO config as ``{relative path: text}``."""
    out = {}
    for family, size, variant in DPO_CONFIGS + PREFERENCE_LOSS_CONFIGS:
        s = next(x for x in SIZES if x.family == family and x.size == size)
        out[f"{family}/{size}_{variant}.yaml"] = dpo_config(s, variant)
    return out
