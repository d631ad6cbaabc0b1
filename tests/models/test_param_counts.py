"""Every real size, built on the meta device, has its published parameter count.

Counts are the released checkpoints' (Hugging Face model cards / safetensors metadata),
counting a tied embedding once. Reward heads (torchtune's ``*_reward_7b``) have no
published count: they are the base model minus the LM head plus a 1-class head.
"""

from __future__ import annotations

import pytest
import torch

from tunesmith.models import SPECS, build_decoder
from tunesmith.models.llama3_2 import llama3_2_1b

PUBLISHED = {
    "llama2_7b": 6_738_415_616,
    "llama2_13b": 13_015_864_320,
    "llama2_70b": 68_976_648_192,
    "llama2_reward_7b": 6_738_415_616 - 32_000 * 4096 + 4096,
    "code_llama2_7b": 6_738_546_688,
    "code_llama2_13b": 13_016_028_160,
    "code_llama2_70b": 68_976_910_336,
    "llama3_8b": 8_030_261_248,
    "llama3_70b": 70_553_706_496,
    "llama3_1_8b": 8_030_261_248,
    "llama3_1_70b": 70_553_706_496,
    "llama3_1_405b": 405_853_388_800,
    "llama3_2_1b": 1_235_814_400,
    "llama3_2_3b": 3_212_749_824,
    "llama3_3_70b": 70_553_706_496,
    "mistral_7b": 7_241_732_096,
    "mistral_reward_7b": 7_241_732_096 - 32_000 * 4096 + 4096,
    "gemma_2b": 2_506_172_416,
    "gemma_7b": 8_537_680_896,
    "gemma2_2b": 2_614_341_888,
    "gemma2_9b": 9_241_705_984,
    "gemma2_27b": 27_227_128_320,
    "phi3_mini": 3_821_079_552,
    "phi4_14b": 14_659_507_200,
    "qwen2_0_5b": 494_032_768,
    "qwen2_1_5b": 1_543_714_304,
    "qwen2_7b": 7_615_616_512,
    "qwen2_5_0_5b": 494_032_768,
    "qwen2_5_1_5b_base": 1_543_714_304,
    "qwen2_5_1_5b_instruct": 1_543_714_304,
    "qwen2_5_3b": 3_085_938_688,
    "qwen2_5_7b_base": 7_615_616_512,
    "qwen2_5_7b_instruct": 7_615_616_512,
    "qwen2_5_14b_base": 14_770_033_664,
    "qwen2_5_14b_instruct": 14_770_033_664,
    "qwen2_5_32b_base": 32_763_876_352,
    "qwen2_5_32b_instruct": 32_763_876_352,
    "qwen2_5_72b_base": 72_706_203_648,
    "qwen2_5_72b_instruct": 72_706_203_648,
    "qwen3_moe_30b_a3b": 30_532_122_624,
    "qwen3_moe_235b_a22b": 235_093_634_560,
    "mixtral_8x7b": 46_702_792_704,
    "mixtral_8x22b": 140_620_634_112,
    "gpt_oss_20b": 20_914_757_184,
    "gpt_oss_120b": 116_829_156_672,
    "qwen3_0_6b_base": 596_049_920,
    "qwen3_0_6b_instruct": 596_049_920,
    "qwen3_1_7b_base": 1_720_574_976,
    "qwen3_1_7b_instruct": 1_720_574_976,
    "qwen3_4b_base": 4_022_468_096,
    "qwen3_4b_instruct": 4_022_468_096,
    "qwen3_8b_base": 8_190_735_360,
    "qwen3_8b_instruct": 8_190_735_360,
    "qwen3_14b_base": 14_768_307_200,
    "qwen3_14b_instruct": 14_768_307_200,
    "qwen3_32b": 32_762_123_264,
    "smollm2_135m": 134_515_008,
    "smollm2_360m": 361_821_120,
    "smollm2_1_7b": 1_711_376_384,
}

_FAMILY_OF = {
    "code_llama2": "code_llama2",
    "llama2": "llama2",
    "llama3_1": "llama3_1",
    "llama3_2": "llama3_2",
    "llama3_3": "llama3_3",
    "llama3": "llama3",
    "mistral": "mistral",
    "gemma2": "gemma2",
    "gemma": "gemma",
    "phi3": "phi3",
    "phi4": "phi4",
    "qwen2_5": "qwen2_5",
    "qwen2": "qwen2",
    "qwen3_moe": "qwen3_moe",
    "qwen3": "qwen3",
    "llama4": "llama4",
    "mixtral": "mixtral",
    "gpt_oss": "gpt_oss",
    "smollm2": "smollm2",
}


def _family(name: str) -> str:
    return next(f for f in _FAMILY_OF if name.startswith(f + "_"))


#: Llama 4: Meta publishes totals with the vision encoder (109B / 400B) and 17B active (the
#: text decoder's); the builders include the encoder
LLAMA4 = {
    "llama4_scout_17b_16e": (109e9, 0.015),
    "llama4_maverick_17b_128e": (400e9, 0.005),
}


def test_table_covers_every_spec():
    from tests.models.test_dense_specs import HF_CONFIGS  # counted in test_dense_specs
    from tests.models.test_mistral_family import HF_CONFIGS as MISTRAL  # and there

    assert set(PUBLISHED) | set(HF_CONFIGS) | set(MISTRAL) | set(LLAMA4) == set(SPECS)


@pytest.mark.parametrize("name", sorted(LLAMA4))
def test_llama4_parameter_counts_on_meta_device(name):
    from tunesmith.models import llama4
    from tunesmith.modules.moe import active_parameter_count

    with torch.device("meta"):
        model = getattr(llama4, name)()
    total, tol = LLAMA4[name]
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - total) <= tol * total, count  # the totals are rounded to 1B
    assert abs(active_parameter_count(model.decoder) - 17e9) <= 0.02 * 17e9


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_on_meta_device(name):
    import importlib

    builder = getattr(importlib.import_module(f"tunesmith.models.{_family(name)}"), name)
    with torch.device("meta"):
        model = builder()
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[name]
    assert model.tok_embeddings.weight.is_meta


def test_build_decoder_matches_public_builder():
    with torch.device("meta"):
        a = build_decoder(SPECS["llama3_2_1b"])
        b = llama3_2_1b()
    assert [(k, v.shape) for k, v in a.state_dict().items()] == [
        (k, v.shape) for k, v in b.state_dict().items()
    ]


#: published active parameters (billions, as rounded on the model cards: within 2%); gpt-oss's
#: cards count them without the input embedding table
ACTIVE = {
    "qwen3_moe_30b_a3b": (3.3, True),
    "qwen3_moe_235b_a22b": (22.0, True),
    "mixtral_8x7b": (12.9, True),
    "mixtral_8x22b": (39.0, True),
    "gpt_oss_20b": (3.6, False),
    "gpt_oss_120b": (5.1, False),
}


@pytest.mark.parametrize("name", sorted(ACTIVE))
def test_moe_active_parameters_on_meta_device(name):
    import importlib

    from tunesmith.modules.moe import active_parameter_count

    builder = getattr(importlib.import_module(f"tunesmith.models.{_family(name)}"), name)
    with torch.device("meta"):
        model = builder()
    billions, with_embeddings = ACTIVE[name]
    active = active_parameter_count(model)
    if not with_embeddings:
        active -= model.tok_embeddings.weight.numel()
    assert abs(active / 1e9 - billions) <= 0.02 * billions, active
