"""Qwen2.5 model builders with torchtune's names; sizes live in ``tunesmith.models._specs``."""

from tunesmith.models.builder import lora_model_builder, model_builder

qwen2_5_0_5b = model_builder("qwen2_5_0_5b", __name__)
lora_qwen2_5_0_5b = lora_model_builder("qwen2_5_0_5b", __name__)
qwen2_5_1_5b_base = model_builder("qwen2_5_1_5b_base", __name__)
lora_qwen2_5_1_5b_base = lora_model_builder("qwen2_5_1_5b_base", __name__)
qwen2_5_1_5b_instruct = model_builder("qwen2_5_1_5b_instruct", __name__)
lora_qwen2_5_1_5b_instruct = lora_model_builder("qwen2_5_1_5b_instruct", __name__)
qwen2_5_3b = model_builder("qwen2_5_3b", __name__)
lora_qwen2_5_3b = lora_model_builder("qwen2_5_3b", __name__)
qwen2_5_7b_base = model_builder("qwen2_5_7b_base", __name__)
lora_qwen2_5_7b_base = lora_model_builder("qwen2_5_7b_base", __name__)
qwen2_5_7b_instruct = model_builder("qwen2_5_7b_instruct", __name__)
lora_qwen2_5_7b_instruct = lora_model_builder("qwen2_5_7b_instruct", __name__)
qwen2_5_14b_base = model_builder("qwen2_5_14b_base", __name__)
lora_qwen2_5_14b_base = lora_model_builder("qwen2_5_14b_base", __name__)
qwen2_5_14b_instruct = model_builder("qwen2_5_14b_instruct", __name__)
lora_qwen2_5_14b_instruct = lora_model_builder("qwen2_5_14b_instruct", __name__)
qwen2_5_32b_base = model_builder("qwen2_5_32b_base", __name__)
lora_qwen2_5_32b_base = lora_model_builder("qwen2_5_32b_base", __name__)
qwen2_5_32b_instruct = model_builder("qwen2_5_32b_instruct", __name__)
lora_qwen2_5_32b_instruct = lora_model_builder("qwen2_5_32b_instruct", __name__)
qwen2_5_72b_base = model_builder("qwen2_5_72b_base", __name__)
lora_qwen2_5_72b_base = lora_model_builder("qwen2_5_72b_base", __name__)
qwen2_5_72b_instruct = model_builder("qwen2_5_72b_instruct", __name__)
lora_qwen2_5_72b_instruct = lora_model_builder("qwen2_5_72b_instruct", __name__)

__all__ = [
    "qwen2_5_0_5b",
    "lora_qwen2_5_0_5b",
    "qwen2_5_1_5b_base",
    "lora_qwen2_5_1_5b_base",
    "qwen2_5_1_5b_instruct",
    "lora_qwen2_5_1_5b_instruct",
    "qwen2_5_3b",
    "lora_qwen2_5_3b",
    "qwen2_5_7b_base",
    "lora_qwen2_5_7b_base",
    "qwen2_5_7b_instruct",
    "lora_qwen2_5_7b_instruct",
    "qwen2_5_14b_base",
    "lora_qwen2_5_14b_base",
    "qwen2_5_14b_instruct",
    "lora_qwen2_5_14b_instruct",
    "qwen2_5_32b_base",
    "lora_qwen2_5_32b_base",
    "qwen2_5_32b_instruct",
    "lora_qwen2_5_32b_instruct",
    "qwen2_5_72b_base",
    "lora_qwen2_5_72b_base",
    "qwen2_5_72b_instruct",
    "lora_qwen2_5_72b_instruct",
]
