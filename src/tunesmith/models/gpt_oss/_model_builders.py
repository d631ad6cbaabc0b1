"""gpt-oss model builders; sizes live in ``tunesmith.models._specs``.

The ``lora_*`` builders adapt the attention (and the output); ``apply_lora_to_mlp`` puts
per-expert LoRA on the experts (``modules.peft.lora_experts``). Load bf16 weights: the released MXFP4 checkpoints are refused.
"""

from tunesmith.models.builder import lora_model_builder, model_builder

gpt_oss_20b = model_builder("gpt_oss_20b", __name__)
lora_gpt_oss_20b = lora_model_builder("gpt_oss_20b", __name__)
gpt_oss_120b = model_builder("gpt_oss_120b", __name__)
lora_gpt_oss_120b = lora_model_builder("gpt_oss_120b", __name__)

__all__ = ["gpt_oss_20b", "lora_gpt_oss_20b", "gpt_oss_120b", "lora_gpt_oss_120b"]
