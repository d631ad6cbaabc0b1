"""SmolLM3 model builders with torchtune-style names; sizes live in ``tunesmith.models._dense_specs``."""

from tunesmith.models.builder import lora_model_builder, model_builder

smollm3_3b = model_builder("smollm3_3b", __name__)
lora_smollm3_3b = lora_model_builder("smollm3_3b", __name__)
qlora_smollm3_3b = lora_model_builder("smollm3_3b", __name__, quantize_base=True, prefix="qlora")

__all__ = ["smollm3_3b", "lora_smollm3_3b", "qlora_smollm3_3b"]
