"""Gemma 3 (text decoders) model builders with torchtune-style names; sizes live in ``tunesmith.models._dense_specs``."""

from tunesmith.models.builder import lora_model_builder, model_builder

gemma3_1b = model_builder("gemma3_1b", __name__)
lora_gemma3_1b = lora_model_builder("gemma3_1b", __name__)
qlora_gemma3_1b = lora_model_builder("gemma3_1b", __name__, quantize_base=True, prefix="qlora")
gemma3_4b = model_builder("gemma3_4b", __name__)
lora_gemma3_4b = lora_model_builder("gemma3_4b", __name__)
qlora_gemma3_4b = lora_model_builder("gemma3_4b", __name__, quantize_base=True, prefix="qlora")
gemma3_12b = model_builder("gemma3_12b", __name__)
lora_gemma3_12b = lora_model_builder("gemma3_12b", __name__)
qlora_gemma3_12b = lora_model_builder("gemma3_12b", __name__, quantize_base=True, prefix="qlora")
gemma3_27b = model_builder("gemma3_27b", __name__)
lora_gemma3_27b = lora_model_builder("gemma3_27b", __name__)
qlora_gemma3_27b = lora_model_builder("gemma3_27b", __name__, quantize_base=True, prefix="qlora")

__all__ = [
    "gemma3_1b",
    "lora_gemma3_1b",
    "qlora_gemma3_1b",
    "gemma3_4b",
    "lora_gemma3_4b",
    "qlora_gemma3_4b",
    "gemma3_12b",
    "lora_gemma3_12b",
    "qlora_gemma3_12b",
    "gemma3_27b",
    "lora_gemma3_27b",
    "qlora_gemma3_27b",
]
