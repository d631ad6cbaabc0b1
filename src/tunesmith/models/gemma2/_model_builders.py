"""Gemma 2 model builders with torchtune's names; sizes live in ``tunesmith.models._specs``."""

from tunesmith.models.builder import lora_model_builder, model_builder

gemma2_2b = model_builder("gemma2_2b", __name__)
lora_gemma2_2b = lora_model_builder("gemma2_2b", __name__)
qlora_gemma2_2b = lora_model_builder("gemma2_2b", __name__, quantize_base=True, prefix="qlora")
gemma2_9b = model_builder("gemma2_9b", __name__)
lora_gemma2_9b = lora_model_builder("gemma2_9b", __name__)
qlora_gemma2_9b = lora_model_builder("gemma2_9b", __name__, quantize_base=True, prefix="qlora")
gemma2_27b = model_builder("gemma2_27b", __name__)
lora_gemma2_27b = lora_model_builder("gemma2_27b", __name__)
qlora_gemma2_27b = lora_model_builder("gemma2_27b", __name__, quantize_base=True, prefix="qlora")

__all__ = [
    "gemma2_2b",
    "lora_gemma2_2b",
    "qlora_gemma2_2b",
    "gemma2_9b",
    "lora_gemma2_9b",
    "qlora_gemma2_9b",
    "gemma2_27b",
    "lora_gemma2_27b",
    "qlora_gemma2_27b",
]
