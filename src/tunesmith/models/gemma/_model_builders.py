"""Gemma model builders with torchtune's names; sizes live in ``tunesmith.models._specs``."""

from tunesmith.models.builder import lora_model_builder, model_builder

gemma_2b = model_builder("gemma_2b", __name__)
lora_gemma_2b = lora_model_builder("gemma_2b", __name__)
qlora_gemma_2b = lora_model_builder("gemma_2b", __name__, quantize_base=True, prefix="qlora")
gemma_7b = model_builder("gemma_7b", __name__)
lora_gemma_7b = lora_model_builder("gemma_7b", __name__)
qlora_gemma_7b = lora_model_builder("gemma_7b", __name__, quantize_base=True, prefix="qlora")

__all__ = [
    "gemma_2b",
    "lora_gemma_2b",
    "qlora_gemma_2b",
    "gemma_7b",
    "lora_gemma_7b",
    "qlora_gemma_7b",
]
