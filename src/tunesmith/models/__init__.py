"""tunesmith.models: model specs, the generic builder, weight conversion, one folder per family.

Family builders live in the family packages (``tunesmith.models.llama3_2.llama3_2_1b``); this
package exposes the shared machinery.
"""

from tunesmith.models._hf_config import load_hf_config, spec_from_hf_config
from tunesmith.models._specs import SPECS, get_spec
from tunesmith.models.builder import (
    build_decoder,
    build_from_hf,
    from_hf,
    lora_settings,
    model_type_of,
)
from tunesmith.models.spec import LoRASettings, ModelSpec, RopeScaling

__all__ = [
    "SPECS",
    "LoRASettings",
    "ModelSpec",
    "RopeScaling",
    "build_decoder",
    "build_from_hf",
    "from_hf",
    "get_spec",
    "load_hf_config",
    "lora_settings",
    "model_type_of",
    "spec_from_hf_config",
]
