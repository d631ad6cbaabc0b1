"""Code Llama 2 model builders with torchtune's names; sizes live in ``tunesmith.models._specs``."""

from tunesmith.models.builder import lora_model_builder, model_builder

code_llama2_7b = model_builder("code_llama2_7b", __name__)
lora_code_llama2_7b = lora_model_builder("code_llama2_7b", __name__)
qlora_code_llama2_7b = lora_model_builder(
    "code_llama2_7b", __name__, quantize_base=True, prefix="qlora"
)
code_llama2_13b = model_builder("code_llama2_13b", __name__)
lora_code_llama2_13b = lora_model_builder("code_llama2_13b", __name__)
qlora_code_llama2_13b = lora_model_builder(
    "code_llama2_13b", __name__, quantize_base=True, prefix="qlora"
)
code_llama2_70b = model_builder("code_llama2_70b", __name__)
lora_code_llama2_70b = lora_model_builder("code_llama2_70b", __name__)
qlora_code_llama2_70b = lora_model_builder(
    "code_llama2_70b", __name__, quantize_base=True, prefix="qlora"
)

__all__ = [
    "code_llama2_7b",
    "lora_code_llama2_7b",
    "qlora_code_llama2_7b",
    "code_llama2_13b",
    "lora_code_llama2_13b",
    "qlora_code_llama2_13b",
    "code_llama2_70b",
    "lora_code_llama2_70b",
    "qlora_code_llama2_70b",
]
