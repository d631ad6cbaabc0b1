"""Llama 3.3 model builders with torchtune's names; sizes live in ``tunesmith.models._specs``."""

from tunesmith.models.builder import lora_model_builder, model_builder

llama3_3_70b = model_builder("llama3_3_70b", __name__)
lora_llama3_3_70b = lora_model_builder("llama3_3_70b", __name__)
qlora_llama3_3_70b = lora_model_builder(
    "llama3_3_70b", __name__, quantize_base=True, prefix="qlora"
)

__all__ = [
    "llama3_3_70b",
    "lora_llama3_3_70b",
    "qlora_llama3_3_70b",
]
