"""How each system is launched on one workload, and how its per-step log is read back.

* tunesmith: ``tunesmith run finetune --config <yaml>`` (``.venv``), metrics from its DiskLogger;
* torchtune: ``tune run full_finetune_single_device | lora_finetune_single_device --config
  <yaml>`` from the peer venv (only its CLI), metrics from its DiskLogger;
* hf: ``benchmarks/hf_peft_train.py`` (a plain transformers + PEFT loop) in the peer venv, fed
  the batches tunesmith's data pipeline produced (``pretokenize``), one ``STEP`` line a step.

Every system trains the same HF checkpoint on the same alpaca rows in file order
(``shuffle: False``), batch 4, max_seq_len 512; AdamW (full: lr 2e-5; LoRA: lr 3e-4 with a
cosine schedule, no warm-up), weight decay 0.01, no clipping, no accumulation.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

SYSTEMS = ("tunesmith", "torchtune", "hf")
FULL_LR, LORA_LR = 2e-5, 3e-4


@dataclass(frozen=True)
class Workload:
    """One training job: model size x method x dtype x packing."""

    size: str
    method: str  # "full" | "lora"
    dtype: str  # "fp32" | "bf16"
    packed: bool
    steps: int
    batch_size: int = 4
    seq_len: int = 512

    @property
    def name(self) -> str:
        return f"{self.size}-{self.method}-{self.dtype}-{'packed' if self.packed else 'unpacked'}"

    @property
    def lora_output(self) -> bool:
        """LoRA on the output projection, except with tied embeddings (torchtune refuses it)."""
        return self.method == "lora" and not self.tied

    @property
    def tied(self) -> bool:
        return self.size.startswith("smollm2")


def _lora_targets(w: Workload) -> str:
    return (
        "  lora_attn_modules: [q_proj, v_proj]\n  apply_lora_to_mlp: False\n"
        f"  apply_lora_to_output: {w.lora_output}\n  lora_rank: 8\n  lora_alpha: 16\n"
        "  lora_dropout: 0.0\n"
    )


def _common(w: Workload, run_dir: Path, model_dir: Path, data: Path, ns: str) -> str:
    """Everything but the model and loss, with ``ns`` = ``torchtune`` or ``tunesmith``."""
    if w.method == "full":
        opt = (
            f"optimizer:\n  _component_: torch.optim.AdamW\n  lr: {FULL_LR}\n  weight_decay: 0.01\n"
        )
    else:
        opt = (
            f"optimizer:\n  _component_: torch.optim.AdamW\n  lr: {LORA_LR}\n  weight_decay: 0.01\n"
            f"lr_scheduler:\n  _component_: {ns}.training.lr_schedulers."
            "get_cosine_schedule_with_warmup\n  num_warmup_steps: 0\n"
            "save_adapter_weights_only: True\n"
        )
    model_type = "LLAMA3_2" if w.tied else "LLAMA3"
    return f"""output_dir: {run_dir}/out
tokenizer:
  _component_: {ns}.models.llama3.llama3_tokenizer
  path: {model_dir}/tokenizer.model
  special_tokens_path: {model_dir}/special_tokens.json
  max_seq_len: {w.seq_len}
checkpointer:
  _component_: {ns}.training.FullModelHFCheckpointer
  checkpoint_dir: {model_dir}
  checkpoint_files: [model.safetensors]
  recipe_checkpoint: null
  output_dir: {run_dir}/out
  model_type: {model_type}
resume_from_checkpoint: False
dataset:
  _component_: {ns}.datasets.alpaca_dataset
  source: json
  data_files: {data}
  split: train
  train_on_input: True
  packed: {w.packed}
seed: 0
shuffle: False
batch_size: {w.batch_size}
epochs: 1
max_steps_per_epoch: {w.steps}
gradient_accumulation_steps: 1
clip_grad_norm: null
optimizer_in_bwd: False
{opt}compile: False
device: cpu
dtype: {w.dtype}
enable_activation_checkpointing: False
enable_activation_offloading: False
metric_logger:
  _component_: {ns}.training.metric_logging.DiskLogger
  log_dir: {run_dir}/logs
log_every_n_steps: 1
log_peak_memory_stats: False
profiler:
  _component_: {ns}.training.setup_torch_profiler
  enabled: False
"""


def torchtune_config(w: Workload, run_dir: Path, model_dir: Path, data: Path, info: dict) -> str:
    """torchtune 0.6.1 YAML: its ``llama3`` / ``llama3_2`` component builders with our dims."""
    tied = w.tied
    builder = "llama3_2" if tied else "llama3"
    prefix = "lora_" if w.method == "lora" else ""
    dims = (
        f"  vocab_size: {info['vocab_size']}\n  num_layers: {info['num_hidden_layers']}\n"
        f"  num_heads: {info['num_attention_heads']}\n  num_kv_heads: {info['num_key_value_heads']}\n"
        f"  embed_dim: {info['hidden_size']}\n  intermediate_dim: {info['intermediate_size']}\n"
        f"  max_seq_len: 2048\n  rope_base: {int(info['rope_theta'])}\n  norm_eps: 1.0e-5\n"
    )
    if tied:  # llama3_2's scaled RoPE with factor 1 is plain RoPE (SmolLM2 has no scaling)
        dims += "  scale_factor: 1\n  tie_word_embeddings: True\n"
    model = f"model:\n  _component_: torchtune.models.{builder}.{prefix}{builder}\n{dims}"
    if w.method == "lora":
        model += _lora_targets(w)
    loss = "loss:\n  _component_: torchtune.modules.loss.CEWithChunkedOutputLoss\n"
    return model + loss + _common(w, run_dir, model_dir, data, "torchtune")


def tunesmith_config(
    w: Workload, run_dir: Path, model_dir: Path, data: Path, extra: str = ""
) -> str:
    """tunesmith YAML: the model built from the checkpoint's config.json."""
    model = (
        "model:\n  _component_: tunesmith.models.build_from_hf\n"
        f"  checkpoint_dir_or_config: {model_dir}\n"
    )
    if w.method == "lora":
        model += _lora_targets(w)
    loss = "loss:\n  _component_: tunesmith.modules.loss.LinearCrossEntropyLoss\n"
    return model + loss + _common(w, run_dir, model_dir, data, "tunesmith") + extra


# ---------------------------------------------------------------------------- log parsing
def parse_disk_logger(log_dir: Path) -> list[tuple[int, float, float]]:
    """(step, loss, tokens/s) from a tunesmith JSONL or torchtune text DiskLogger folder."""
    steps: dict[int, tuple[float, float]] = {}
    files = sorted(log_dir.glob("*.jsonl")) + sorted(log_dir.glob("*.txt"))
    for f in files:
        for line in f.read_text().splitlines():
            line = line.strip()
            if line.startswith("{"):  # tunesmith JSONL
                rec = json.loads(line)
                if "loss" in rec and "tokens_per_second" in rec:
                    steps[int(rec["step"])] = (float(rec["loss"]), float(rec["tokens_per_second"]))
                continue
            m = re.match(r"Step (\d+) \| (.*)", line)  # torchtune
            if m:
                kv = dict(re.findall(r"(\w+):(\S+)", m.group(2)))
                if "loss" in kv and "tokens_per_second_per_gpu" in kv:
                    steps[int(m.group(1))] = (
                        float(kv["loss"]),
                        float(kv["tokens_per_second_per_gpu"]),
                    )
    return [(s, *v) for s, v in sorted(steps.items())]


def parse_step_lines(stdout: Path) -> list[tuple[int, float, float]]:
    """(step, loss, tokens/s) from ``STEP n loss=.. tokens=.. tps=..`` lines."""
    out = []
    for line in stdout.read_text().splitlines():
        m = re.match(r"STEP (\d+) loss=(\S+) tokens=(\d+) tps=(\S+)", line)
        if m:
            out.append((int(m.group(1)), float(m.group(2)), float(m.group(4))))
    return out
