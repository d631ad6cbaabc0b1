"""Gemma 4 text decoder builders with torchtune-style names; sizes live in
``tunesmith.models._gemma4_specs`` (the published checkpoints' ``text_config``)."""

from tunesmith.models.builder import lora_model_builder, model_builder

gemma4_e2b = model_builder("gemma4_e2b", __name__)
lora_gemma4_e2b = lora_model_builder("gemma4_e2b", __name__)
qlora_gemma4_e2b = lora_model_builder("gemma4_e2b", __name__, quantize_base=True, prefix="qlora")
gemma4_e4b = model_builder("gemma4_e4b", __name__)
lora_gemma4_e4b = lora_model_builder("gemma4_e4b", __name__)
qlora_gemma4_e4b = lora_model_builder("gemma4_e4b", __name__, quantize_base=True, prefix="qlora")
gemma4_31b = model_builder("gemma4_31b", __name__)
lora_gemma4_31b = lora_model_builder("gemma4_31b", __name__)
qlora_gemma4_31b = lora_model_builder("gemma4_31b", __name__, quantize_base=True, prefix="qlora")
gemma4_26b_a4b = model_builder("gemma4_26b_a4b", __name__)
lora_gemma4_26b_a4b = lora_model_builder("gemma4_26b_a4b", __name__)
qlora_gemma4_26b_a4b = lora_model_builder(
    "gemma4_26b_a4b", __name__, quantize_base=True, prefix="qlora"
)

__all__ = [
    "gemma4_e2b",
    "lora_gemma4_e2b",
    "qlora_gemma4_e2b",
    "gemma4_e4b",
    "lora_gemma4_e4b",
    "qlora_gemma4_e4b",
    "gemma4_31b",
    "lora_gemma4_31b",
    "qlora_gemma4_31b",
    "gemma4_26b_a4b",
    "lora_gemma4_26b_a4b",
    "qlora_gemma4_26b_a4b",
]
