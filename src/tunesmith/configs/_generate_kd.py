"""The bundled knowledge-distillation configs (recipe ``knowledge_distillation``): torchtune
0.6.1's four KD configs, same names, keys and hyperparameters.

``_generate.render_all`` includes them; run ``python -m tunesmith.configs._generate`` after an
edit here. Tokenizer and checkpointer blocks come from the finetune table's sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunesmith.configs._generate import (
    SIZES,
    Size,
    _checkpointer_block,
    _ckpt_dir,
    _tokenizer_block,
)

__all__ = ["KD_CONFIGS", "KDPair", "kd_config", "render_kd"]


@dataclass(frozen=True)
class KDPair:
    """A teacher -> student pair and the student's LoRA settings in torchtune's config."""

    name: str  # file name stem without the variant, e.g. "1.5_to_0.5B"
    student: tuple[str, str]  # (family, size) in the finetune table
    teacher: tuple[str, str]
    lora_rank: int
    extra_lora: str  # model-block lines after apply_lora_to_mlp, torchtune's order
    batch_size: int
    fused: bool  # the optimizer block sets fused: True
    model_type: str  # torchtune's model_type for both checkpointers
    adapter_only_key: bool  # the config lists save_adapter_weights_only


_PAIRS = {
    "qwen2": KDPair("1.5_to_0.5B", ("qwen2", "0.5B"), ("qwen2", "1.5B"), 32, "", 8, False, "QWEN2", False),
    "llama3_2": KDPair(
        "8B_to_1B", ("llama3_2", "1B"), ("llama3_1", "8B"), 64,
        "  apply_lora_to_output: False\n", 4, True, "LLAMA3", True,
    ),
}  # fmt: skip

# (folder, variant) for every torchtune 0.6.1 KD config
KD_CONFIGS: list[tuple[str, str]] = [
    ("qwen2", "KD_lora_single_device"),
    ("qwen2", "KD_lora_distributed"),
    ("llama3_2", "KD_lora_single_device"),
    ("llama3_2", "KD_lora_distributed"),
]


def _size(family_size: tuple[str, str]) -> Size:
    family, size = family_size
    return next(x for x in SIZES if x.family == family and x.size == size)


def kd_config(folder: str, variant: str) -> str:
    """Text of ``<folder>/<pair>_<variant>.yaml``."""
    p = _PAIRS[folder]
    student, teacher = _size(p.student), _size(p.teacher)
    name = f"{folder}/{p.name}_{variant}"
    single = variant.endswith("single_device")
    alias = "knowledge_distillation_" + ("single_device" if single else "distributed")
    where = "one device" if single else "several devices (FSDP2)"
    launch = "" if single else "--nproc_per_node 2 "
    out = f"/tmp/tunesmith/{folder}_{p.name.replace('.', '_')}/{variant}"
    lora = (
        "model:\n"
        f"  _component_: tunesmith.models.{student.family}.lora_{student.builder}\n"
        "  lora_attn_modules: ['q_proj', 'v_proj', 'output_proj']\n"
        "  apply_lora_to_mlp: True\n"
        f"{p.extra_lora}"
        f"  lora_rank: {p.lora_rank}  # higher increases accuracy and memory\n"
        f"  lora_alpha: {2 * p.lora_rank}  # usually alpha=2*rank\n"
        + ("  lora_dropout: 0.0\n" if p.extra_lora else "")
    )
    ckpt = _checkpointer_block(student).replace(
        f"model_type: {student.model_type}", f"model_type: {p.model_type}"
    )
    teacher_ckpt = _checkpointer_block(teacher).replace(
        f"model_type: {teacher.model_type}", f"model_type: {p.model_type}"
    )
    text = (
        "# recipe: knowledge_distillation\n"
        f"# LoRA knowledge distillation of {teacher.hub_id} (teacher) into {student.hub_id}\n"
        f"# (student) on Alpaca, {where}; torchtune's config of the same name.\n"
        "#\n"
        "# Get the weights first:\n"
        f"#   tunesmith download {student.hub_id} --output-dir {_ckpt_dir(student)}\n"
        f"#   tunesmith download {teacher.hub_id} --output-dir {_ckpt_dir(teacher)}\n"
        "# KD works best when the teacher was finetuned on the target data first, e.g.\n"
        f"#   tunesmith run finetune --config {teacher.family}/{teacher.size}_lora_single_device\n"
        "#\n"
        f"# Launch (torchtune's recipe name works too: tunesmith run {alias} --config {name}):\n"
        f"#   tunesmith run {launch}knowledge_distillation --config {name}\n"
        "# Override any key on the command line, e.g. teacher_checkpointer.checkpoint_dir=<DIR>.\n\n"
        f"output_dir: {out} # /tmp may be deleted by your system. Change it to your preference.\n\n"
        "# Student model\n" + lora + "\n"
        "# Teacher model (frozen)\n"
        "teacher_model:\n"
        f"  _component_: tunesmith.models.{teacher.family}.{teacher.builder}\n\n"
        "# Tokenizer (shared by teacher and student)\n" + _tokenizer_block(student) + "\n"
        "# Student checkpoint\n"
        + ckpt
        + "resume_from_checkpoint: False\n"
        + ("save_adapter_weights_only: False\n" if p.adapter_only_key else "")
        + "\n"
        "# Teacher checkpoint\n" + teacher_ckpt.replace("checkpointer:", "teacher_checkpointer:", 1)
    )
    text += (
        "\n# Dataset and sampler\n"
        "dataset:\n"
        "  _component_: tunesmith.datasets.alpaca_cleaned_dataset\n"
        "  packed: False  # True increases speed\n"
        f"seed: null\nshuffle: True\nbatch_size: {p.batch_size}\n\n"
        "# Optimizer and scheduler\n"
        "optimizer:\n  _component_: torch.optim.AdamW\n"
        + ("  fused: True\n" if p.fused else "")
        + "  weight_decay: 0.01\n  lr: 3e-4\n"
        "lr_scheduler:\n"
        "  _component_: tunesmith.training.lr_schedulers.get_cosine_schedule_with_warmup\n"
        "  num_warmup_steps: 100\n\n"
        "loss:\n  _component_: tunesmith.modules.loss.CEWithChunkedOutputLoss\n\n"
        "kd_loss:\n  _component_: tunesmith.modules.kd_loss.ForwardKLWithChunkedOutputLoss\n"
        "kd_ratio: 0.5\n\n"
        "# Training\n"
        "epochs: 1\n"
        "max_steps_per_epoch: null\n"
        "gradient_accumulation_steps: 8  # Use to increase effective batch size\n"
        + ("clip_grad_norm: null\n" if single else "")
        + "compile: False  # torch.compile the model + loss, True increases speed + decreases memory\n\n"
        "# Logging\n"
        "metric_logger:\n"
        "  _component_: tunesmith.training.metric_logging.DiskLogger\n"
        "  log_dir: ${output_dir}/logs\n"
        "log_every_n_steps: 1\n"
        f"log_peak_memory_stats: {single}\n\n"
        "# Environment\ndevice: cuda\ndtype: bf16\n\n"
        "# Memory management\n"
        "enable_activation_checkpointing: False  # True reduces memory\n"
        "enable_activation_offloading: False  # True reduces memory\n\n"
        "# Profiler (disabled)\n"
        "profiler:\n"
        "  _component_: tunesmith.training.setup_torch_profiler\n"
        "  enabled: False\n"
        "  output_dir: ${output_dir}/profiling_outputs\n"
        "  cpu: True\n  cuda: True\n  profile_memory: False\n  with_stack: False\n"
        "  record_shapes: True\n  with_flops: False\n"
        "  # torch.profiler.schedule: wait, warmup, active, repeat\n"
        f"  wait_steps: 5\n  warmup_steps: {3 if single else 5}\n  active_steps: 2\n"
        "  num_cycles: 1\n"
    )
    return text


def render_kd() -> dict[str, str]:
    """Every KD config as ``{relative path: text}``."""
    return {
        f"{folder}/{_PAIRS[folder].name}_{variant}.yaml": kd_config(folder, variant)
        for folder, variant in KD_CONFIGS
    }
