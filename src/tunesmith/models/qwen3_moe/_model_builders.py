"""Qwen3-MoE model builders; sizes live in ``tunesmith.models._specs``.

The ``lora_*`` builders adapt the attention (and the output); ``apply_lora_to_mlp`` puts
per-expert LoRA on the experts (``modules.peft.lora_experts``).
"""

from tunesmith.models.builder import lora_model_builder, model_builder

qwen3_moe_30b_a3b = model_builder("qwen3_moe_30b_a3b", __name__)
lora_qwen3_moe_30b_a3b = lora_model_builder("qwen3_moe_30b_a3b", __name__)
qwen3_moe_235b_a22b = model_builder("qwen3_moe_235b_a22b", __name__)
lora_qwen3_moe_235b_a22b = lora_model_builder("qwen3_moe_235b_a22b", __name__)

__all__ = [
    "qwen3_moe_30b_a3b",
    "lora_qwen3_moe_30b_a3b",
    "qwen3_moe_235b_a22b",
    "lora_qwen3_moe_235b_a22b",
]
