"""Phi-4 model builders with torchtune's names; sizes live in ``tunesmith.models._specs``
(Phi-4-mini: ``_dense_specs``)."""

from tunesmith.models.builder import lora_model_builder, model_builder

phi4_14b = model_builder("phi4_14b", __name__)
lora_phi4_14b = lora_model_builder("phi4_14b", __name__)
qlora_phi4_14b = lora_model_builder("phi4_14b", __name__, quantize_base=True, prefix="qlora")
phi4_mini = model_builder("phi4_mini", __name__)
lora_phi4_mini = lora_model_builder("phi4_mini", __name__)
qlora_phi4_mini = lora_model_builder("phi4_mini", __name__, quantize_base=True, prefix="qlora")

__all__ = [
    "phi4_14b",
    "lora_phi4_14b",
    "qlora_phi4_14b",
    "phi4_mini",
    "lora_phi4_mini",
    "qlora_phi4_mini",
]
