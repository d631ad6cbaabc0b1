"""Llama 3.2 model builders with torchtune's names; sizes live in ``tunesmith.models._specs``."""

from tunesmith.models.builder import lora_model_builder, model_builder

llama3_2_1b = model_builder("llama3_2_1b", __name__)
lora_llama3_2_1b = lora_model_builder("llama3_2_1b", __name__)
qlora_llama3_2_1b = lora_model_builder("llama3_2_1b", __name__, quantize_base=True, prefix="qlora")
llama3_2_3b = model_builder("llama3_2_3b", __name__)
lora_llama3_2_3b = lora_model_builder("llama3_2_3b", __name__)
qlora_llama3_2_3b = lora_model_builder("llama3_2_3b", __name__, quantize_base=True, prefix="qlora")

__all__ = [
    "llama3_2_1b",
    "lora_llama3_2_1b",
    "qlora_llama3_2_1b",
    "llama3_2_3b",
    "lora_llama3_2_3b",
    "qlora_llama3_2_3b",
]
