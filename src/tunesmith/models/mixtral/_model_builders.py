"""Mixtral model builders; sizes live in ``tunesmith.models._specs``.

The ``lora_*`` builders adapt the attention (and the output); ``apply_lora_to_mlp`` puts
per-expert LoRA on the experts (``modules.peft.lora_experts``).
"""

from tunesmith.models.builder import lora_model_builder, model_builder

mixtral_8x7b = model_builder("mixtral_8x7b", __name__)
lora_mixtral_8x7b = lora_model_builder("mixtral_8x7b", __name__)
mixtral_8x22b = model_builder("mixtral_8x22b", __name__)
lora_mixtral_8x22b = lora_model_builder("mixtral_8x22b", __name__)

__all__ = [
    "mixtral_8x7b",
    "lora_mixtral_8x7b",
    "mixtral_8x22b",
    "lora_mixtral_8x22b",
]
