"""torchtune-era component paths that moved still resolve to the right tunesmith object."""

import pytest

from tunesmith.config import resolve_component


@pytest.mark.parametrize(
    ("old", "module", "name"),
    [
        (
            "torchtune.modules.get_cosine_schedule_with_warmup",
            "tunesmith.training.lr_schedulers",
            "get_cosine_schedule_with_warmup",
        ),
        ("torchao.prototype.low_bit_optim.AdamW8bit", "torchao.optim", "AdamW8bit"),
        ("torchtune.modules.peft.QATLoRALinear", "tunesmith.quantization", "QATLoRALinear"),
        (
            "torchtune.training.quantization.Int8DynActInt4WeightQuantizer",
            "tunesmith.quantization",
            "Int8DynActInt4WeightQuantizer",
        ),
        (
            "torchtune.training.FullModelHFCheckpointer",
            "tunesmith.training",
            "FullModelHFCheckpointer",
        ),
    ],
)
def test_moved_paths_resolve(old: str, module: str, name: str) -> None:
    import importlib

    assert resolve_component(old) is getattr(importlib.import_module(module), name)
