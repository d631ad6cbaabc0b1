"""Llama 4 text-decoder builders (torchtune main's names); sizes live in ``_specs``.

Only the text decoder is built: torchtune's early-fusion vision encoder is not (yet). The
``lora_*`` builders' ``apply_lora_to_mlp`` puts per-expert LoRA on the experts and LoRA on the
shared expert and dense MLP layers.
"""

from tunesmith.models.builder import lora_model_builder, model_builder

llama4_scout_17b_16e = model_builder("llama4_scout_17b_16e", __name__)
lora_llama4_scout_17b_16e = lora_model_builder("llama4_scout_17b_16e", __name__)
llama4_maverick_17b_128e = model_builder("llama4_maverick_17b_128e", __name__)
lora_llama4_maverick_17b_128e = lora_model_builder("llama4_maverick_17b_128e", __name__)

__all__ = [
    "llama4_scout_17b_16e",
    "lora_llama4_scout_17b_16e",
    "llama4_maverick_17b_128e",
    "lora_llama4_maverick_17b_128e",
]
