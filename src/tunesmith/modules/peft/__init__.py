"""Parameter-efficient finetuning modules (LoRA, DoRA, QLoRA) and their helpers."""

from tunesmith.modules.peft._trainable import TrainableParams
from tunesmith.modules.peft._utils import (
    LORA_ATTN_MODULES,
    AdapterModule,
    LoRAKeyMismatchError,
    disable_adapter,
    get_adapter_params,
    get_adapter_state_dict,
    get_lora_module_names,
    get_merged_lora_ckpt,
    is_adapter_key,
    load_dora_magnitudes,
    merge_lora_weights,
    set_trainable_params,
    validate_missing_and_unexpected_for_lora,
)
from tunesmith.modules.peft.dora import DoRALinear
from tunesmith.modules.peft.lora import LoRALinear

__all__ = [
    "LORA_ATTN_MODULES",
    "AdapterModule",
    "DoRALinear",
    "LoRAKeyMismatchError",
    "LoRALinear",
    "TrainableParams",
    "disable_adapter",
    "get_adapter_params",
    "get_adapter_state_dict",
    "get_lora_module_names",
    "get_merged_lora_ckpt",
    "is_adapter_key",
    "load_dora_magnitudes",
    "merge_lora_weights",
    "set_trainable_params",
    "validate_missing_and_unexpected_for_lora",
]
