"""OLMo 2 model builders with torchtune-style names; sizes live in ``tunesmith.models._dense_specs``."""

from tunesmith.models.builder import lora_model_builder, model_builder

olmo2_7b = model_builder("olmo2_7b", __name__)
lora_olmo2_7b = lora_model_builder("olmo2_7b", __name__)
qlora_olmo2_7b = lora_model_builder("olmo2_7b", __name__, quantize_base=True, prefix="qlora")
olmo2_13b = model_builder("olmo2_13b", __name__)
lora_olmo2_13b = lora_model_builder("olmo2_13b", __name__)
qlora_olmo2_13b = lora_model_builder("olmo2_13b", __name__, quantize_base=True, prefix="qlora")

__all__ = [
    "olmo2_7b",
    "lora_olmo2_7b",
    "qlora_olmo2_7b",
    "olmo2_13b",
    "lora_olmo2_13b",
    "qlora_olmo2_13b",
]
