"""OLMo 3 model builders with torchtune-style names; sizes live in ``tunesmith.models._dense_specs``."""

from tunesmith.models.builder import lora_model_builder, model_builder

olmo3_7b = model_builder("olmo3_7b", __name__)
lora_olmo3_7b = lora_model_builder("olmo3_7b", __name__)
qlora_olmo3_7b = lora_model_builder("olmo3_7b", __name__, quantize_base=True, prefix="qlora")
olmo3_32b = model_builder("olmo3_32b", __name__)
lora_olmo3_32b = lora_model_builder("olmo3_32b", __name__)
qlora_olmo3_32b = lora_model_builder("olmo3_32b", __name__, quantize_base=True, prefix="qlora")

__all__ = [
    "olmo3_7b",
    "lora_olmo3_7b",
    "qlora_olmo3_7b",
    "olmo3_32b",
    "lora_olmo3_32b",
    "qlora_olmo3_32b",
]
