"""The bundled model sizes: one row per family size, naming its builders, checkpoint files,
tokenizer and the torchtune configs shipped for it (``_generate.py`` renders them).

Edit a row here, then run ``python -m tunesmith.configs._generate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    lora_mlp: bool = True  # False: fused gate / up in the checkpoint (no PEFT adapter for them)


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
    # OLMo 3, Granite 4.0 dense (the hybrid Mamba-2 H models are refused). Olmo-3-7B's three
    # shards are confirmed; the other shard counts are inferred from the checkpoints' sizes
    # (override checkpointer.checkpoint_files if a download differs).
    Size("olmo3", "7B", "olmo3_7b", "allenai/Olmo-3-7B-Instruct", _shards(3), "OLMO3",
         "tunesmith.models.olmo3.olmo3_tokenizer", _HF_JSON, ["lora_single_device"], big=True,
         torchtune_twin=False),
    Size("olmo3", "32B", "olmo3_32b", "allenai/Olmo-3-32B-Think", _shards(14), "OLMO3",
         "tunesmith.models.olmo3.olmo3_tokenizer", _HF_JSON, ["lora"], big=True,
         torchtune_twin=False),
    Size("granite4", "micro", "granite4_micro", "ibm-granite/granite-4.0-micro", _shards(2),
         "GRANITE4", "tunesmith.models.granite4.granite4_tokenizer", _HF_JSON,
         ["lora_single_device"], loss="tunesmith.modules.loss.CEWithChunkedOutputLoss",
         torchtune_twin=False),
    # gpt-oss from bf16 copies (the released MXFP4 checkpoints are refused); harmony template
    Size("gpt_oss", "20B", "gpt_oss_20b", "unsloth/gpt-oss-20b-BF16", _shards(9), "GPT_OSS",
         "tunesmith.models.gpt_oss.gpt_oss_tokenizer", _HF_JSON, ["lora_single_device"],
         big=True, lora_lr="1e-4", moe=True, torchtune_twin=False),
    Size("gpt_oss", "120B", "gpt_oss_120b", "unsloth/gpt-oss-120b-BF16", _shards(73), "GPT_OSS",
         "tunesmith.models.gpt_oss.gpt_oss_tokenizer", _HF_JSON, ["lora"], big=True,
         lora_lr="1e-4", moe=True, torchtune_twin=False),
    # Mistral Nemo 12B and Small 3 24B (2501): text-only checkpoints, Tekken tokenizer.json
    Size("mistral", "12B", "mistral_nemo_12b", "mistralai/Mistral-Nemo-Instruct-2407",
         _shards(5), "MISTRAL", "tunesmith.models.mistral.mistral_nemo_tokenizer", _HF_JSON,
         ["lora_single_device", "qlora_single_device"], big=True, lora_rank=16,
         lora_lr="1e-4", torchtune_twin=False),
    Size("mistral", "24B", "mistral_small_24b", "mistralai/Mistral-Small-24B-Instruct-2501",
         _shards(10), "MISTRAL", "tunesmith.models.mistral.mistral_small_tokenizer", _HF_JSON,
         ["lora", "qlora_single_device"], big=True, lora_rank=16, lora_lr="1e-4",
         torchtune_twin=False),
    # Mistral Small 3.1 (2503) and Ministral 3 (2512): the text decoders of the multimodal
    # mistral3 releases (their vision towers are carried through unchanged). Ministral 3's
    # Instruct checkpoints are FP8 (refused), so the configs point at the BF16 Reasoning ones,
    # whose chat template the tokenizer tests check; the Ministral 3 shard counts are inferred
    # from the checkpoints' sizes (override checkpointer.checkpoint_files if a download differs).
    Size("mistral", "3_1_24B", "mistral_small_3_1_24b", "mistralai/Mistral-Small-3.1-24B-Instruct-2503",
         _shards(10), "MISTRAL", "tunesmith.models.mistral.mistral_small_tokenizer", _HF_JSON,
         ["lora", "qlora_single_device"], big=True, lora_rank=16, lora_lr="1e-4",
         torchtune_twin=False),
    Size("ministral3", "3B", "ministral3_3b", "mistralai/Ministral-3-3B-Reasoning-2512", _shards(2),
         "MISTRAL", "tunesmith.models.ministral3.ministral3_tokenizer", _HF_JSON,
         ["full_single_device", "lora_single_device"], lora_rank=16, lora_lr="1e-4",
         torchtune_twin=False),
    Size("ministral3", "8B", "ministral3_8b", "mistralai/Ministral-3-8B-Reasoning-2512", _shards(4),
         "MISTRAL", "tunesmith.models.ministral3.ministral3_tokenizer", _HF_JSON,
         ["lora_single_device", "qlora_single_device"], big=True, lora_rank=16, lora_lr="1e-4",
         torchtune_twin=False),
    Size("ministral3", "14B", "ministral3_14b", "mistralai/Ministral-3-14B-Reasoning-2512",
         _shards(6), "MISTRAL", "tunesmith.models.ministral3.ministral3_tokenizer", _HF_JSON,
         ["lora_single_device", "qlora_single_device"], big=True, lora_rank=16, lora_lr="1e-4",
         torchtune_twin=False),
    # The larger sizes of the MoE and dense families (shard counts of the hub checkpoints;
    # OLMo 2 13B's is inferred from its size)
    Size("qwen3_moe", "235B_A22B", "qwen3_moe_235b_a22b", "Qwen/Qwen3-235B-A22B", _shards(118),
         "QWEN3_MOE", _QWEN3_TOK, _BPE, ["lora"], big=True, lora_lr="1e-4", moe=True,
         torchtune_twin=False),
    Size("mixtral", "8x22B", "mixtral_8x22b", "mistralai/Mixtral-8x22B-Instruct-v0.1", _shards(59),
         "MIXTRAL", "tunesmith.models.mixtral.mistral_tokenizer", _SPM, ["lora"], big=True,
         lora_rank=16, lora_lr="2e-5", moe=True, torchtune_twin=False),
    Size("olmo2", "13B", "olmo2_13b", "allenai/OLMo-2-1124-13B-Instruct", _shards(6), "OLMO2",
         "tunesmith.models.olmo2.olmo2_tokenizer", _HF_JSON, ["lora_single_device"], big=True,
         torchtune_twin=False),
    Size("granite3_3", "8B", "granite3_3_8b", "ibm-granite/granite-3.3-8b-instruct", _shards(4),
         "GRANITE", "tunesmith.models.granite3_3.granite3_3_tokenizer", _HF_JSON,
         ["lora_single_device"], big=True, loss="tunesmith.modules.loss.CEWithChunkedOutputLoss",
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
    "ministral3": "3B",
}  # fmt: skip
