"""Phi-4 model builders with torchtune's names; sizes live in ``tunesmith.models._specs``."""

from tunesmith.models.builder import lora_model_builder, model_builder

phi4_14b = model_builder("phi4_14b", __name__)
lora_phi4_14b = lora_model_builder("phi4_14b", __name__)
qlora_phi4_14b = lora_model_builder("phi4_14b", __name__, quantize_base=True, prefix="qlora")

__all__ = [
    "phi4_14b",
    "lora_phi4_14b",
    "qlora_phi4_14b",
]
