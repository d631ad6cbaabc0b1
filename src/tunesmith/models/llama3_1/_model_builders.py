"""Llama 3.1 model builders with torchtune's names; sizes live in ``tunesmith.models._specs``."""

from tunesmith.models.builder import lora_model_builder, model_builder

llama3_1_8b = model_builder("llama3_1_8b", __name__)
lora_llama3_1_8b = lora_model_builder("llama3_1_8b", __name__)
qlora_llama3_1_8b = lora_model_builder("llama3_1_8b", __name__, quantize_base=True, prefix="qlora")
llama3_1_70b = model_builder("llama3_1_70b", __name__)
lora_llama3_1_70b = lora_model_builder("llama3_1_70b", __name__)
qlora_llama3_1_70b = lora_model_builder(
    "llama3_1_70b", __name__, quantize_base=True, prefix="qlora"
)
llama3_1_405b = model_builder("llama3_1_405b", __name__)
lora_llama3_1_405b = lora_model_builder("llama3_1_405b", __name__)
qlora_llama3_1_405b = lora_model_builder(
    "llama3_1_405b", __name__, quantize_base=True, prefix="qlora"
)

__all__ = [
    "llama3_1_8b",
    "lora_llama3_1_8b",
    "qlora_llama3_1_8b",
    "llama3_1_70b",
    "lora_llama3_1_70b",
    "qlora_llama3_1_70b",
    "llama3_1_405b",
    "lora_llama3_1_405b",
    "qlora_llama3_1_405b",
]
