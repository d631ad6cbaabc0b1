"""Qwen2 model builders with torchtune's names; sizes live in ``tunesmith.models._specs``."""

from tunesmith.models.builder import lora_model_builder, model_builder

qwen2_0_5b = model_builder("qwen2_0_5b", __name__)
lora_qwen2_0_5b = lora_model_builder("qwen2_0_5b", __name__)
qwen2_1_5b = model_builder("qwen2_1_5b", __name__)
lora_qwen2_1_5b = lora_model_builder("qwen2_1_5b", __name__)
qwen2_7b = model_builder("qwen2_7b", __name__)
lora_qwen2_7b = lora_model_builder("qwen2_7b", __name__)

__all__ = [
    "qwen2_0_5b",
    "lora_qwen2_0_5b",
    "qwen2_1_5b",
    "lora_qwen2_1_5b",
    "qwen2_7b",
    "lora_qwen2_7b",
]
