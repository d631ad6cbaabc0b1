"""Phi-3 model builders with torchtune's names; sizes live in ``tunesmith.models._specs``."""

from tunesmith.models.builder import lora_model_builder, model_builder

phi3_mini = model_builder("phi3_mini", __name__)
lora_phi3_mini = lora_model_builder("phi3_mini", __name__)
qlora_phi3_mini = lora_model_builder("phi3_mini", __name__, quantize_base=True, prefix="qlora")
phi3_5_mini = model_builder("phi3_5_mini", __name__)
lora_phi3_5_mini = lora_model_builder("phi3_5_mini", __name__)
qlora_phi3_5_mini = lora_model_builder("phi3_5_mini", __name__, quantize_base=True, prefix="qlora")
phi3_mini_128k = model_builder("phi3_mini_128k", __name__)
lora_phi3_mini_128k = lora_model_builder("phi3_mini_128k", __name__)
qlora_phi3_mini_128k = lora_model_builder(
    "phi3_mini_128k", __name__, quantize_base=True, prefix="qlora"
)

__all__ = [
    "phi3_5_mini",
    "lora_phi3_5_mini",
    "qlora_phi3_5_mini",
    "phi3_mini",
    "lora_phi3_mini",
    "qlora_phi3_mini",
    "phi3_mini_128k",
    "lora_phi3_mini_128k",
    "qlora_phi3_mini_128k",
]
