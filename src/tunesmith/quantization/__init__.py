"""tunesmith.quantization: torchao post-training quantization, QAT (incl. LoRA + QAT), and
saving / loading quantized checkpoints. torchao is imported when a quantizer runs."""

from tunesmith.quantization._io import *  # noqa: F401,F403
from tunesmith.quantization._qat_lora import *  # noqa: F401,F403
from tunesmith.quantization._qat_model import *  # noqa: F401,F403
from tunesmith.quantization._quantizers import *  # noqa: F401,F403
